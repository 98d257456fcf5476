"""Turbo for LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, `LlavaOnevisionModel`) with a SigLIP tower.

Turbo merges tokens inside the SigLIP tower (no [CLS]: no token is protected and the semantic value comes from the
size-weighted mean query, as for SigLIP alone) of every image crop and every video frame, and the tower gives the
full patch grid back (`llava_next_kit`) before the stock packing: anyres crops with `image_newline` and the
`anyres_max_9` downscaling, the video frames' bilinear pooling. So the image and video token counts, and the stock
`LlavaOnevisionProcessor`, stay as they are; a text whose count differs is refused with both counts named. The saving
is the tower's compute only (the language model reads as many tokens as in the stock model).

With `r=0` the model is the stock one, bit for bit. Image and video tokens can also be reduced inside the Qwen2 (or
Llama) language model (`llm_layers`, `llm_keep`, `llava_next_kit.TurboPackedLLMMixin`): per image, its packed features
with its `image_newline` tokens; per video, all its frames and its closing `image_newline`, jointly. Not supported:
vision towers other than SigLIP, `output_attentions` while merging.

Example:

```python
>>> from turbo_hf.modeling.modeling_turbo_llava_onevision import (
...     TurboLlavaOnevisionConfig, TurboLlavaOnevisionForConditionalGeneration)
>>> vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
...               num_attention_heads=4, image_size=32, patch_size=4)
>>> text = dict(model_type="qwen2", vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...             num_attention_heads=4, num_key_value_heads=2)
>>> config = TurboLlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=4, video_token_id=5,
...                                    image_grid_pinpoints=[[32, 64], [64, 32]], turbo_config={"r": 8})
>>> model = TurboLlavaOnevisionForConditionalGeneration(config)
>>> model.model.vision_tower.turbo_runtime.schedule(64)
[8, 8, 8]
```
"""

from __future__ import annotations

from transformers.models.llava_onevision.configuration_llava_onevision import LlavaOnevisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
)
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer, SiglipVisionModel

from .configuration_turbo import TurboConfig
from .llava_next_kit import TurboPackedLLMMixin, TurboPlaceholderMixin, register_grid_family
from .llm_decoders import LLAMA_DECODER, QWEN2_DECODER
from .modeling_turbo_siglip import TurboSiglipAttention, TurboSiglipEncoderLayer
from .turbo_layers import TurboModelMixin

NO_SPLIT = ["SiglipVisionEmbeddings", "TurboSiglipEncoderLayer", "LlavaOnevisionMultiModalProjector",
            "TurboLlamaDecoderLayer", "TurboQwen2DecoderLayer"]


class TurboLlavaOnevisionConfig(LlavaOnevisionConfig):
    """`LlavaOnevisionConfig` with a `turbo_config` (`TurboConfig`, for the SigLIP tower) inside `config.json`."""

    model_type = "turbo_llava_onevision"
    sub_configs_defaults = {**LlavaOnevisionConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboLlavaOnevisionModel(TurboPackedLLMMixin, TurboModelMixin, TurboPlaceholderMixin, LlavaOnevisionModel):
    """`LlavaOnevisionModel` whose SigLIP tower merges tokens with Turbo and gives the full grid back."""

    config_class = TurboLlavaOnevisionConfig
    _no_split_modules = NO_SPLIT
    turbo_family = "LLaVA-OneVision"


class TurboLlavaOnevisionForConditionalGeneration(TurboModelMixin, LlavaOnevisionForConditionalGeneration):
    """`LlavaOnevisionForConditionalGeneration` with Turbo in its SigLIP tower (images and video frames)."""

    config_class = TurboLlavaOnevisionConfig
    _no_split_modules = NO_SPLIT


LLAVA_ONEVISION_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboLlavaOnevisionForConditionalGeneration,
    "AutoModel": TurboLlavaOnevisionModel,
}

register_grid_family(
    "llava_onevision",
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    {
        LlavaOnevisionForConditionalGeneration: TurboLlavaOnevisionForConditionalGeneration,
        LlavaOnevisionModel: TurboLlavaOnevisionModel,
    },
    SiglipVisionModel,
    {SiglipEncoderLayer: TurboSiglipEncoderLayer, SiglipAttention: TurboSiglipAttention},
    {TurboLlavaOnevisionConfig: LLAVA_ONEVISION_AUTO_CLASSES},
    protect_first=False,
    decoders={**LLAMA_DECODER, **QWEN2_DECODER},
)

__all__ = ["TurboLlavaOnevisionConfig", "TurboLlavaOnevisionForConditionalGeneration", "TurboLlavaOnevisionModel"]
