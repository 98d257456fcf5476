"""Evaluation settings: the modes compared in one run at several `r`, from presets; usage errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo, is_turbo_applied, remove_turbo, turbo_plan
from .arguments import comma_list


MODE_ALIASES = {"none": "stock", "stock": "stock", "random": "random", "tome": "tome", "semantic": "semantic", "turbo": "turbo"}
MODE_ORDER = ("stock", "random", "tome", "semantic", "turbo")
MODE_LABELS = {"stock": "stock", "random": "random", "tome": "ToMe", "semantic": "semantic only", "turbo": "Turbo"}
MODE_STYLES = {  # colour, marker
    "stock": ("black", "*"),
    "random": ("tab:gray", "x"),
    "tome": ("tab:blue", "o"),
    "semantic": ("tab:orange", "s"),
    "turbo": ("tab:red", "D"),
}


class UsageError(ValueError):
    """A bad argument or input: scripts print the message and exit with code 2."""


def parse_modes(text: str | Sequence[str]) -> list[str]:
    """Comma-separated modes -> canonical names (`none` and `stock` both mean the unmodified model).

    Example:

    ```python
    >>> from turbo_hf.evaluation.driver import parse_modes
    >>> parse_modes("none,tome,turbo")
    ['stock', 'tome', 'turbo']
    ```
    """
    try:
        words = comma_list(text, str.lower, "--modes") if isinstance(text, str) else [w.strip().lower() for w in text if w.strip()]
    except ValueError:
        words = []
    if not words:
        raise UsageError("No mode given: use some of " + ", ".join(MODE_ALIASES) + ".")
    modes = []
    for word in words:
        if word not in MODE_ALIASES:
            raise UsageError(f"Unknown mode {word!r}: choose from {', '.join(MODE_ALIASES)}.")
        if MODE_ALIASES[word] not in modes:
            modes.append(MODE_ALIASES[word])
    return modes


def parse_ints(text: str, name: str = "--r") -> list[int]:
    """Comma-separated non-negative integers (`"0,16,30"`)."""
    try:
        values = comma_list(text, int, name)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if any(v < 0 for v in values):
        raise UsageError(f"{name} takes comma-separated non-negative integers, got {text!r}.")
    return values


@dataclass
class Setting:
    """One evaluated configuration: the stock model, or a Turbo mode at some `r`."""

    name: str
    mode: str
    r: int | list[int]
    config: TurboConfig | None

    def summary(self) -> dict:
        return {"name": self.name, "mode": self.mode, "r": self.r,
                "turbo_config": self.config.settings() if self.config is not None else None}


def preset_base(preset: str | None) -> tuple[dict, int | list[int] | None]:
    """(Turbo settings without the budget, the preset's `r`) of a preset name or JSON path; ({}, None) for None."""
    if not preset:
        return {}, None
    from ..cli.presets import load_preset

    try:
        settings = dict(load_preset(preset)["turbo_config"])
    except ValueError as error:
        raise UsageError(str(error)) from error
    r = settings.pop("r", None)
    settings.pop("flops_ratio", None)
    return settings, r


def build_settings(
    modes: Sequence[str], r_values: Sequence[int | list[int]], base: dict | None = None
) -> list[Setting]:
    """The stock model first (always: it is the speed and quality reference), then every mode at every r > 0.

    `base` holds the other Turbo settings (a preset's); `mode` and `r` are set per setting, and modes other
    than `turbo` keep them too (alpha is unused by `tome`, `semantic` and `random`).

    Example:

    ```python
    >>> from turbo_hf.evaluation.driver import build_settings
    >>> [s.name for s in build_settings(["stock", "tome", "turbo"], [0, 8])]
    ['stock', 'tome r=8', 'turbo r=8']
    ```
    """
    base = {k: v for k, v in (base or {}).items() if k not in ("r", "flops_ratio", "mode")}
    settings = [Setting("stock", "stock", 0, None)]
    for mode in sorted(set(modes) - {"stock"}, key=MODE_ORDER.index):
        for r in r_values:
            if r == 0 or (isinstance(r, list) and not any(r)):
                continue
            label = r if isinstance(r, int) else "preset"
            try:
                config = TurboConfig(**{**base, "mode": mode, "r": r})
            except ValueError as error:
                raise UsageError(f"Invalid Turbo settings: {error}") from error
            settings.append(Setting(f"{mode} r={label}", mode, r, config))
    return settings


def use_setting(model: nn.Module, setting: Setting) -> nn.Module:
    """Put the model in a setting: `apply_turbo` with its config, or the stock model."""
    if setting.config is None:
        if is_turbo_applied(model):
            remove_turbo(model)
    else:
        apply_turbo(model, setting.config)
    return model


def check_settings(model: nn.Module, settings: Sequence[Setting]) -> None:
    """Apply every setting once so an unsupported model or an impossible `r` fails before any work."""
    try:
        for setting in settings:
            use_setting(model, setting)
    except ValueError as error:
        raise UsageError(str(error)) from error
    finally:
        if is_turbo_applied(model):
            remove_turbo(model)


def vision_patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int, bool]:
    """(rows, cols, has [CLS]) of the patch grid a patched model's vision encoder sees for these pixels."""
    patch = getattr(model, "_turbo_patch", None)
    if patch is None:
        raise ValueError("The model is not patched: call `apply_turbo` first.")
    config = patch.vision_models[0].config
    size = getattr(config, "vision_config", config).patch_size  # LLaVA's patched module is the whole model
    size = size if isinstance(size, (list, tuple)) else (size, size)
    return pixel_values.shape[-2] // size[0], pixel_values.shape[-1] // size[1], patch.adapter.protect_first


def setting_plan(model: nn.Module, setting: Setting, pixel_values: torch.Tensor | None) -> dict:
    """Token counts and the FLOP fraction (of the vision encoder) of a setting for these pixel values."""
    if setting.config is None:
        return {"token_counts": None, "final_tokens": None, "flops_fraction": 1.0, "flops_speed_limit": 1.0}
    apply_turbo(model, setting.config)
    try:
        num_tokens = None
        if pixel_values is not None:
            rows, cols, has_cls = vision_patch_grid(model, pixel_values)
            num_tokens = rows * cols + int(has_cls)
        plan = turbo_plan(model, num_tokens)
    finally:
        remove_turbo(model)
    return {
        "token_counts": plan["token_counts"],
        "final_tokens": plan["token_counts"][-1],
        "flops_fraction": plan["flops_fraction"],
        "flops_speed_limit": 1.0 / plan["flops_fraction"],
    }
