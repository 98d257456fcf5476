"""Turbo presets for public checkpoints (the JSON files in the repository's `configs/` folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

PRESET_DIR_ENV = "TURBO_HF_CONFIGS"


def preset_dir() -> Path:
    """Where presets are read: `$TURBO_HF_CONFIGS`, else the `configs/` folder of a source checkout."""
    if os.environ.get(PRESET_DIR_ENV):
        return Path(os.environ[PRESET_DIR_ENV])
    return Path(__file__).resolve().parents[2] / "configs"


def list_presets() -> list[str]:
    """Names of the available presets."""
    folder = preset_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_preset(name_or_path: str | os.PathLike) -> dict:
    """A preset by name (from `preset_dir()`) or by the path of its JSON file.

    Example:

    ```python
    >>> from turbo_hf.presets import load_preset
    >>> load_preset("dinov2-small")["model_class"]
    'TurboDinov2Model'
    ```
    """
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = preset_dir() / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(list_presets()) or f"none found in {preset_dir()} (set ${PRESET_DIR_ENV})"
        raise ValueError(f"Unknown preset {str(name_or_path)!r}. Known presets: {known}.")
    preset = json.loads(path.read_text())
    missing = {"name", "base_model", "model_class", "turbo_config"} - preset.keys()
    if missing:
        raise ValueError(f"Preset {path} lacks {sorted(missing)}.")
    return preset


__all__ = ["list_presets", "load_preset", "preset_dir"]
