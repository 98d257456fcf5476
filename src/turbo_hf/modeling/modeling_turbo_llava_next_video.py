"""Turbo for LLaVA-NeXT-Video (`LlavaNextVideoForConditionalGeneration`, `LlavaNextVideoModel`), CLIP tower.

Why this video model: it is LLaVA-NeXT with a video path (its images take LLaVA-NeXT's anyres packing, served by the
same tower), its frames go through one tower and one 2x2 pooling, and each video is one run of `<video>` tokens, so
a joint merge over a video's frames has one count the processor can give.

Two reductions, both optional:

- In the CLIP tower (`r`, `flops_ratio`, ...): every image crop and every frame merges tokens and the tower gives the
  full grid back (`llava_next_kit`), so pooling, packing and the stock token counts are unchanged.
- Across the frames of each video (`video_keep`): after the tower, the pooling and the projector, the tokens of all
  frames are merged jointly down to `video_token_count(stock_count, video_keep)` (`video_token_merging`); the
  language model reads that many `<video>` tokens, in time order. `TurboLlavaNextVideoProcessor` expands `<video>`
  with the same count, and a text whose count differs is refused with both counts named.

- Inside the language model (`llm_layers`, `llm_keep`, `llava_next_kit.TurboPackedLLMMixin`): each image (its packed
  features) and each video (all its frames' tokens, jointly) keeps `llm_keep` of its tokens at each layer of
  `llm_layers`, as for LLaVA-NeXT.

Under proportional attention (`reduction="merge"`), a video token that stands for `size` stock tokens after the
joint merge gets `log(size)` as its key bias in every layer of the language model, prefill and decoding (the in-LLM
run's masks, `llm_decoder_layers`). With `r=0` and no `video_keep` / `llm_layers` the model is the stock one, bit for
bit. Not supported: vision towers other than CLIP, `output_attentions` while merging.

Example:

```python
>>> from turbo_hf.modeling.modeling_turbo_llava_next_video import (
...     TurboLlavaNextVideoConfig, TurboLlavaNextVideoForConditionalGeneration)
>>> vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
...               num_attention_heads=4, image_size=32, patch_size=4)
>>> text = dict(model_type="llama", vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...             num_attention_heads=4)
>>> config = TurboLlavaNextVideoConfig(vision_config=vision, text_config=text, image_token_id=4, video_token_id=5,
...                                    image_grid_pinpoints=[[32, 64]], turbo_config={"video_keep": 0.25})
>>> TurboLlavaNextVideoForConditionalGeneration(config).model.num_video_tokens(frames=8)  # 8 x 16 in stock
32
```
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, CLIPVisionModel
from transformers.models.llava_next_video.configuration_llava_next_video import LlavaNextVideoConfig
from transformers.models.llava_next_video.modeling_llava_next_video import (
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoModel,
)

from .configuration_turbo import TurboConfig
from .llava_next_kit import TurboPackedLLMMixin, TurboPlaceholderMixin, register_grid_family
from .llm_decoders import LLAMA_DECODER, QWEN2_DECODER
from .modeling_turbo_clip import TurboCLIPAttention, TurboCLIPEncoderLayer
from .turbo_layers import TurboModelMixin
from .video_token_merging import merge_video_tokens, video_token_count

NO_SPLIT = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer", "LlavaNextVideoMultiModalProjector",
            "TurboLlamaDecoderLayer", "TurboQwen2DecoderLayer"]


@dataclass
class TurboVideoOutput(BaseModelOutputWithPooling):
    """What `TurboLlavaNextVideoModel.get_video_features` returns with `video_keep`.

    Args:
        pooler_output (`torch.Tensor` of shape `(num_videos, tokens, hidden_size)`): each video's merged tokens.
        deepstack_features (`list[list[torch.Tensor]]`): `[[sizes_video_0, ...]]`, one `(tokens, 1)` float32
            tensor per video, the stock tokens each merged token stands for (its `log(size)` bias in the language
            model). It uses the field `generate()` expands for beam search together with `pooler_output`.
    """

    deepstack_features: list | None = None


class TurboLlavaNextVideoConfig(LlavaNextVideoConfig):
    """`LlavaNextVideoConfig` with a `turbo_config` (`TurboConfig`: the CLIP tower's settings and `video_keep`)."""

    model_type = "turbo_llava_next_video"
    sub_configs_defaults = {**LlavaNextVideoConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


def stock_video_tokens(config: LlavaNextVideoConfig, frames: int) -> int:
    """`<video>` tokens of a video of `frames` frames in the stock model (each frame's grid, pooled)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    pooled = (side - config.spatial_pool_stride) // config.spatial_pool_stride + 1
    return frames * pooled * pooled


class TurboLlavaNextVideoModel(TurboPackedLLMMixin, TurboModelMixin, TurboPlaceholderMixin, LlavaNextVideoModel):
    """`LlavaNextVideoModel` with Turbo in its CLIP tower and, with `video_keep`, a joint merge over each video's
    frames before the language model."""

    config_class = TurboLlavaNextVideoConfig
    _no_split_modules = NO_SPLIT
    turbo_family = "LLaVA-NeXT-Video"

    def num_video_tokens(self, frames: int) -> int:
        """`<video>` tokens this model reads for a video of `frames` frames at the config's image size."""
        return video_token_count(stock_video_tokens(self.config, frames), self.vision_tower.turbo_runtime.config.video_keep)

    def turbo_count_advice(self, kind: str) -> str:
        keep = self.vision_tower.turbo_runtime.config.video_keep
        if kind == "image" or keep is None:
            return super().turbo_count_advice(kind)
        return (f"Each video's frames are merged jointly to `video_token_count(stock_count, video_keep={keep!r})` "
                "tokens: expand `<video>` with `TurboLlavaNextVideoProcessor` synced with this model "
                "(`processor.sync_with(model)`).")

    def get_video_features(self, pixel_values_videos: torch.Tensor, vision_feature_layer=None,
                           vision_feature_select_strategy=None, **kwargs):
        """The stock video features (tower, pooling, projector), then each video's frames merged jointly to the
        `video_keep` count (`TurboVideoOutput`: their sizes in `deepstack_features`)."""
        # Overrides transformers.models.llava_next_video.modeling_llava_next_video.LlavaNextVideoModel.get_video_features (v5.24)
        return_dict = kwargs.pop("return_dict", True)
        outputs = super().get_video_features(
            pixel_values_videos, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, return_dict=True, **kwargs,
        )
        config = self.vision_tower.turbo_runtime.config
        if config.video_keep is not None:
            features = outputs.pooler_output
            keep = video_token_count(features.shape[1], config.video_keep)
            merged, sizes = merge_video_tokens(features, pixel_values_videos.shape[1], keep, config)
            outputs = TurboVideoOutput(**{**outputs, "pooler_output": merged}, deepstack_features=[list(sizes)])
        return outputs if return_dict else outputs.to_tuple()


class TurboLlavaNextVideoForConditionalGeneration(TurboModelMixin, LlavaNextVideoForConditionalGeneration):
    """`LlavaNextVideoForConditionalGeneration` with Turbo in its CLIP tower and the joint frame merge."""

    config_class = TurboLlavaNextVideoConfig
    _no_split_modules = NO_SPLIT


LLAVA_NEXT_VIDEO_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboLlavaNextVideoForConditionalGeneration,
    "AutoModel": TurboLlavaNextVideoModel,
}

register_grid_family(
    "llava_next_video",
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoModel,
    {
        LlavaNextVideoForConditionalGeneration: TurboLlavaNextVideoForConditionalGeneration,
        LlavaNextVideoModel: TurboLlavaNextVideoModel,
    },
    CLIPVisionModel,
    {CLIPEncoderLayer: TurboCLIPEncoderLayer, CLIPAttention: TurboCLIPAttention},
    {TurboLlavaNextVideoConfig: LLAVA_NEXT_VIDEO_AUTO_CLASSES},
    protect_first=True,
    decoders={**LLAMA_DECODER, **QWEN2_DECODER},
    merges_video=True,
)

__all__ = [
    "TurboLlavaNextVideoConfig",
    "TurboLlavaNextVideoForConditionalGeneration",
    "TurboLlavaNextVideoModel",
    "TurboVideoOutput",
    "stock_video_tokens",
]
