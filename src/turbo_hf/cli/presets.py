"""Turbo presets for public checkpoints (JSON files shipped with the package in `turbo_hf/cli/presets/`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PRESET_DIR_ENV = "TURBO_HF_CONFIGS"


def preset_dir() -> Path:
    """Where presets are read: `$TURBO_HF_CONFIGS`, else the presets shipped with the package."""
    if os.environ.get(PRESET_DIR_ENV):
        return Path(os.environ[PRESET_DIR_ENV])
    return Path(__file__).resolve().with_name("presets")


def list_presets() -> list[str]:
    """Names of the available presets."""
    folder = preset_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


_PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _preset_path(name_or_path: str | os.PathLike) -> Path:
    """The JSON file a preset argument names (the rule of `load_preset`), or a `ValueError`."""
    text = os.fspath(name_or_path)
    if text.endswith(".json"):  # a path given deliberately: any existing JSON file
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"Preset file {text!r} does not exist.")
        return path
    if _PRESET_NAME.fullmatch(text) is None or ".." in text:
        known = ", ".join(list_presets()) or "none"
        raise ValueError(
            f"Invalid preset {text!r}: give a preset name (letters, digits, '-', '_', '.'; no path separators or "
            f"'..') from {preset_dir()}, or the path of an existing .json file. Known presets: {known}."
        )
    path = preset_dir() / f"{text}.json"
    if not path.is_file():
        known = ", ".join(list_presets()) or f"none found in {preset_dir()} (set ${PRESET_DIR_ENV})"
        raise ValueError(f"Unknown preset {text!r}. Known presets: {known}.")
    return path


def load_preset(name_or_path: str | os.PathLike) -> dict:
    """A preset by name (from `preset_dir()`) or by the path of its JSON file.

    The rule: a value ending in `.json` is a file path, relative to the working directory or absolute, and
    must be an existing file (so `my-presets/dinov2-small.json` or `/abs/my-preset.json` load what they name).
    Anything else is a preset name: letters, digits, `-`, `_` and `.` only (no `/`, `\\` or `..`), looked up
    as `<name>.json` in `preset_dir()` and nowhere else. A name with a path separator or `..` that is not an
    existing `.json` path (`../../x`) raises a `ValueError`, so a name can never leave the presets folder.

    Raises:
        ValueError: for an invalid or unknown name (naming the known presets), a missing file, or a preset
            without `name`, `base_model`, `model_class` and `turbo_config`.

    Example:

    ```python
    >>> from turbo_hf.cli.presets import load_preset
    >>> load_preset("dinov2-small")["model_class"]
    'TurboDinov2Model'
    >>> load_preset("../../dinov2-small")
    Traceback (most recent call last):
    ...
    ValueError: Invalid preset '../../dinov2-small': give a preset name ...
    ```
    """
    path = _preset_path(name_or_path)
    try:
        preset = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Preset {path} is not a readable JSON file: {error}") from error
    if not isinstance(preset, dict):
        raise ValueError(f"Preset {path} must hold a JSON object, got {type(preset).__name__}.")
    missing = {"name", "base_model", "model_class", "turbo_config"} - preset.keys()
    if missing:
        raise ValueError(f"Preset {path} lacks {sorted(missing)}.")
    return preset


__all__ = ["list_presets", "load_preset", "preset_dir"]
