"""`turbo-hf export`: a local or Hub checkpoint plus a preset -> a self-contained Turbo model folder."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoProcessor
from transformers.utils import logging

from ..modeling.configuration_turbo import TurboConfig
from ..evaluation.local_paths import check_local_path
from .presets import list_presets, load_preset

logger = logging.get_logger(__name__)


def model_family(model_type: str) -> str:
    """The family of a `model_type`: `turbo_clip_vision_model` -> `clip`, `blip-2` -> `blip_2`.

    Example:

    ```python
    >>> from turbo_hf.cli.export import model_family
    >>> model_family("turbo_clip_vision_model"), model_family("blip-2"), model_family("dinov2")
    ('clip', 'blip_2', 'dinov2')
    ```
    """
    family = model_type.removeprefix("turbo_").replace("-", "_")
    for suffix in ("_vision_model", "_text_model"):
        family = family.removesuffix(suffix)
    return family


def class_family(model_class: type) -> str:
    """The family of a Turbo (or stock) model class, from the stock `model_type` its config class extends."""
    for config_class in model_class.config_class.__mro__:
        model_type = getattr(config_class, "model_type", "")
        if model_type and not model_type.startswith("turbo"):
            return model_family(model_type)
    return model_family(model_class.config_class.model_type)


def check_base_family(base: str | os.PathLike, model_class: type, preset_name: str) -> None:
    """Refuse a base checkpoint of another family than the preset's class, reading only its `config.json`.

    Raises:
        ValueError: naming the checkpoint's `model_type` (and architectures), the preset and its class, and the
            presets of the checkpoint's family.
    """
    import turbo_hf
    from transformers import PreTrainedConfig

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(str(base))
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not read the config of --base {str(base)!r}: {error}") from error
    model_type = config_dict.get("model_type")
    expected = class_family(model_class)
    if not model_type:
        raise ValueError(f"--base {str(base)!r} has no `model_type` in its config.json; preset {preset_name!r} needs a "
                         f"{expected!r} checkpoint.")
    family = model_family(model_type)
    if family == expected:
        return
    matching = []
    for name in list_presets():
        cls = getattr(turbo_hf, load_preset(name)["model_class"], None)
        if cls is not None and class_family(cls) == family:
            matching.append(name)
    architectures = ", ".join(config_dict.get("architectures") or []) or "no architectures listed"
    hint = f"presets for it: {', '.join(matching)}" if matching else "no preset covers that family"
    raise ValueError(
        f"--base {str(base)!r} is a {model_type!r} checkpoint ({architectures}), but --preset {preset_name!r} builds "
        f"{model_class.__name__}, a {expected!r} model: nothing was written. Use a {expected!r} checkpoint, or a preset "
        f"of the {family!r} family ({hint})."
    )


def export_model(
    base: str | os.PathLike,
    preset: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overrides: dict | None = None,
    results_markdown: str | None = None,
) -> Path:
    """Build the preset's Turbo class from `base`, save it as a Hub folder with its processor and card.

    The processor is the preset's `processor_class` (synced with the model, e.g. `TurboLlavaProcessor`) or
    `AutoProcessor`. A base checkpoint of another family than the preset's class (a DINOv2 base with a CLIP
    preset) raises a `ValueError` naming both, after reading only its `config.json` and before anything is
    loaded or written.

    Args:
        base: a Hub id or a local folder of the stock checkpoint.
        preset: a preset name shipped with the package or a preset JSON path.
        out_dir: the folder to write.
        overrides: Turbo settings that replace the preset's (e.g. `{"r": 8}`).
        results_markdown: a measured speed/quality table to put in the model card.

    Example:

    ```python
    >>> import tempfile
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf.cli.export import export_model
    >>> base, out = tempfile.mkdtemp(), tempfile.mkdtemp()  # base: a Hub id or a stock checkpoint folder
    >>> ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                    image_size=32, patch_size=8)).save_pretrained(base)
    >>> folder = export_model(base, "vit-base-patch16-224", out, overrides={"r": 2})
    >>> (folder / "config.json").exists()
    True
    ```
    """
    import turbo_hf

    base = check_local_path(base, "base")
    spec = load_preset(preset)
    model_class = getattr(turbo_hf, spec["model_class"], None)
    if model_class is None:
        raise ValueError(f"Preset {spec['name']!r} names {spec['model_class']!r}, which turbo_hf does not provide.")
    settings = {**spec["turbo_config"], **(overrides or {})}
    if "flops_ratio" in (overrides or {}):
        settings.pop("r", None)
    turbo_config = TurboConfig(**settings)
    check_base_family(base, model_class, spec["name"])  # before any weights are loaded or written
    model = model_class.from_pretrained(base, turbo_config=turbo_config)
    out = Path(out_dir)
    base_model = spec["base_model"] if Path(base).exists() else str(base)
    card = {
        "base_model": base_model,
        "license": spec.get("license"),
        "results_markdown": results_markdown,
        "sources": spec.get("sources"),
    }
    model.save_pretrained(out, model_card=card)
    processor_class = getattr(turbo_hf, spec["processor_class"]) if spec.get("processor_class") else AutoProcessor
    try:
        processor = processor_class.from_pretrained(base)
    except (OSError, ValueError, KeyError) as error:
        logger.warning(f"No processor saved with the model ({error}).")
    else:
        if hasattr(processor, "sync_with"):  # a processor whose token counts follow the model's merging
            processor.sync_with(model)
        processor.save_pretrained(out)
    return out


__all__ = ["check_base_family", "class_family", "export_model", "model_family"]
