"""`TurboLlavaNextVideoProcessor`: a `LlavaNextVideoProcessor` whose `<video>` expansion is the count of a Turbo
LLaVA-NeXT-Video model with `video_keep` (`video_token_merging.video_token_count` of the stock count). Images keep
the stock expansion (Turbo gives the full grid back for them)."""

from __future__ import annotations

from transformers import AutoProcessor, LlavaNextVideoConfig
from transformers.models.llava_next_video.processing_llava_next_video import LlavaNextVideoProcessor

from .configuration_turbo import as_turbo_config
from .modeling_turbo_llava_next_video import TurboLlavaNextVideoConfig
from .video_token_merging import video_token_count


class TurboLlavaNextVideoProcessor(LlavaNextVideoProcessor):
    """`LlavaNextVideoProcessor` that expands each `<video>` into as many tokens as the model keeps per video.

    Build it like a `LlavaNextVideoProcessor`, then `sync_with(model)` (or a config); `video_keep` is saved in the
    processor config by `save_pretrained`.

    Args:
        video_keep (`int` or `float`, *optional*): the model's `TurboConfig.video_keep` (None: the stock count).
    """

    _auto_class = "AutoProcessor"

    def __init__(
        self,
        video_processor=None,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        video_token="<video>",
        image_token="<image>",
        num_additional_image_tokens=0,
        video_keep: int | float | None = None,
        **kwargs,
    ):
        # the stock signature spelled out: `save_pretrained` keeps the `__init__` arguments only
        super().__init__(
            video_processor,
            image_processor,
            tokenizer,
            chat_template=chat_template,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            video_token=video_token,
            image_token=image_token,
            num_additional_image_tokens=num_additional_image_tokens,
            **kwargs,
        )
        self.video_keep = as_turbo_config({"video_keep": video_keep}).video_keep

    def sync_with(self, model_or_config) -> "TurboLlavaNextVideoProcessor":
        """Take `video_keep` from a (Turbo) LLaVA-NeXT-Video model (the settings it runs with) or config."""
        config = getattr(model_or_config, "config", model_or_config)
        if not isinstance(config, LlavaNextVideoConfig):
            raise ValueError("`TurboLlavaNextVideoProcessor.sync_with` needs a (Turbo) LLaVA-NeXT-Video model or config, "
                             f"got a {type(model_or_config).__name__}.")
        inner = getattr(model_or_config, "model", model_or_config)
        runtime = getattr(getattr(inner, "vision_tower", None), "turbo_runtime", None)
        turbo = runtime.config if runtime is not None else as_turbo_config(getattr(config, "turbo_config", None))
        self.video_keep = turbo.video_keep
        return self

    def replace_video_token(self, video_inputs: dict | None = None, video_idx: int = 0, **kwargs) -> str:
        """The stock expansion, shortened to the tokens the model keeps for this video."""
        # Overrides transformers.models.llava_next_video.processing_llava_next_video.LlavaNextVideoProcessor.replace_video_token (v5.24)
        stock = len(super().replace_video_token(video_inputs, video_idx, **kwargs)) // len(self.video_token)
        return self.video_token * video_token_count(stock, self.video_keep)


AutoProcessor.register(TurboLlavaNextVideoConfig, TurboLlavaNextVideoProcessor, exist_ok=True)

__all__ = ["TurboLlavaNextVideoProcessor"]
