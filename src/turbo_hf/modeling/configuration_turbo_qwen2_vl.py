"""`TurboQwen2VLConfig`, `TurboQwen2_5_VLConfig`, `TurboQwen3VLConfig`: configs of Turbo Qwen2-VL / Qwen2.5-VL /
Qwen3-VL checkpoints (`model_type="turbo_qwen2_vl"` / `"turbo_qwen2_5_vl"` / `"turbo_qwen3_vl"`)."""

from __future__ import annotations

from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

from .configuration_turbo import TurboConfig


class TurboQwen2VLConfig(Qwen2VLConfig):
    """`Qwen2VLConfig` with a `turbo_config` (`TurboConfig`: `llm_layers`, `llm_keep`, ...) inside `config.json`."""

    model_type = "turbo_qwen2_vl"
    sub_configs_defaults = {**Qwen2VLConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboQwen2_5_VLConfig(Qwen2_5_VLConfig):
    """`Qwen2_5_VLConfig` with a `turbo_config` (`TurboConfig`) inside `config.json`."""

    model_type = "turbo_qwen2_5_vl"
    sub_configs_defaults = {**Qwen2_5_VLConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboQwen3VLConfig(Qwen3VLConfig):
    """`Qwen3VLConfig` with a `turbo_config` (`TurboConfig`) inside `config.json`."""

    model_type = "turbo_qwen3_vl"
    sub_configs_defaults = {**Qwen3VLConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


__all__ = ["TurboQwen2VLConfig", "TurboQwen2_5_VLConfig", "TurboQwen3VLConfig"]
