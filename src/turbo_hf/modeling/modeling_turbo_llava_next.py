"""Turbo for LLaVA-NeXT (`LlavaNextForConditionalGeneration`, `LlavaNextModel`) with a CLIP vision tower.

Turbo merges tokens inside the CLIP tower of every anyres crop (the base image and each tile) and the tower gives
the full patch grid back before `pack_image_features` (`llava_next_kit`): unpadding, `image_newline` and the
image-token count are the stock ones, so the stock `LlavaNextProcessor` expands `<image>` correctly whatever the
Turbo settings, and a text whose count differs is refused with both counts named. The saving is the tower's compute
only; the language model reads as many image tokens as in the stock model.

With `r=0` the model is the stock one, bit for bit. `vision_feature_layer` may be an int or a list (each selected
layer is unmerged to the full grid, so their concatenation lines up token by token). Image tokens can also be
reduced inside a Llama or Qwen2 language model (`llm_layers`, `llm_keep`: per image, its packed features with its
`image_newline` tokens, `llava_next_kit.TurboPackedLLMMixin`). Not supported: vision towers other than CLIP,
`output_attentions` while merging.

Example:

```python
>>> from turbo_hf.modeling.modeling_turbo_llava_next import TurboLlavaNextConfig, TurboLlavaNextForConditionalGeneration
>>> vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
...               num_attention_heads=4, image_size=32, patch_size=4)
>>> text = dict(model_type="llama", vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...             num_attention_heads=4)
>>> config = TurboLlavaNextConfig(vision_config=vision, text_config=text, image_token_id=4,
...                               image_grid_pinpoints=[[32, 64], [64, 32]], turbo_config={"r": 8})
>>> TurboLlavaNextForConditionalGeneration(config).model.vision_tower.turbo_runtime.schedule(65)
[8, 8, 8]
```
"""

from __future__ import annotations

from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, CLIPVisionModel
from transformers.models.llava_next.configuration_llava_next import LlavaNextConfig
from transformers.models.llava_next.modeling_llava_next import LlavaNextForConditionalGeneration, LlavaNextModel

from .configuration_turbo import TurboConfig
from .llava_next_kit import TurboPackedLLMMixin, TurboPlaceholderMixin, register_grid_family
from .llm_decoders import LLAMA_DECODER, QWEN2_DECODER
from .modeling_turbo_clip import TurboCLIPAttention, TurboCLIPEncoderLayer
from .turbo_layers import TurboModelMixin

NO_SPLIT = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer", "LlavaNextMultiModalProjector",
            "TurboLlamaDecoderLayer", "TurboQwen2DecoderLayer"]


class TurboLlavaNextConfig(LlavaNextConfig):
    """`LlavaNextConfig` with a `turbo_config` (`TurboConfig`, for the CLIP tower's layers) inside `config.json`."""

    model_type = "turbo_llava_next"
    sub_configs_defaults = {**LlavaNextConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboLlavaNextModel(TurboPackedLLMMixin, TurboModelMixin, TurboPlaceholderMixin, LlavaNextModel):
    """`LlavaNextModel` whose CLIP tower merges tokens with Turbo and gives the full grid back."""

    config_class = TurboLlavaNextConfig
    _no_split_modules = NO_SPLIT


class TurboLlavaNextForConditionalGeneration(TurboModelMixin, LlavaNextForConditionalGeneration):
    """`LlavaNextForConditionalGeneration` with Turbo in its CLIP tower (anyres crops merged, full grid packed)."""

    config_class = TurboLlavaNextConfig
    _no_split_modules = NO_SPLIT


LLAVA_NEXT_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboLlavaNextForConditionalGeneration,
    "AutoModel": TurboLlavaNextModel,
}

register_grid_family(
    "llava_next",
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    {LlavaNextForConditionalGeneration: TurboLlavaNextForConditionalGeneration, LlavaNextModel: TurboLlavaNextModel},
    CLIPVisionModel,
    {CLIPEncoderLayer: TurboCLIPEncoderLayer, CLIPAttention: TurboCLIPAttention},
    {TurboLlavaNextConfig: LLAVA_NEXT_AUTO_CLASSES},
    protect_first=True,
    decoders={**LLAMA_DECODER, **QWEN2_DECODER},
)

__all__ = ["TurboLlavaNextConfig", "TurboLlavaNextForConditionalGeneration", "TurboLlavaNextModel"]
