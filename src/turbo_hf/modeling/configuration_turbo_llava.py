"""`TurboLlavaConfig`: the config of a Turbo LLaVA checkpoint (`model_type="turbo_llava"`)."""

from __future__ import annotations

from transformers.models.llava.configuration_llava import LlavaConfig

from .configuration_turbo import TurboConfig
from .llava_token_counts import check_feature_layer


class TurboLlavaConfig(LlavaConfig):
    """`LlavaConfig` with a `turbo_config` (`TurboConfig`, for the vision tower) inside `config.json`.

    `turbo_config` covers the vision layers up to `vision_feature_layer` (a list `r` has one entry per such
    layer: `num_hidden_layers - 1` of them for the default -2).
    """

    model_type = "turbo_llava"
    sub_configs_defaults = {**LlavaConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_feature_layer(self.vision_feature_layer, self.turbo_config)


__all__ = ["TurboLlavaConfig"]
