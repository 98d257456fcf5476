"""`turbo-hf export`: a local or Hub checkpoint plus a preset -> a self-contained Turbo model folder."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoProcessor
from transformers.utils import logging

from .configuration_turbo import TurboConfig
from .presets import load_preset

logger = logging.get_logger(__name__)


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
    `AutoProcessor`.

    Args:
        base: a Hub id or a local folder of the stock checkpoint.
        preset: a preset name from `configs/` or a preset JSON path.
        out_dir: the folder to write.
        overrides: Turbo settings that replace the preset's (e.g. `{"r": 8}`).
        results_markdown: a measured speed/quality table to put in the model card.

    Example:

    ```python
    >>> import tempfile
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf.export import export_model
    >>> base, out = tempfile.mkdtemp(), tempfile.mkdtemp()  # base: a Hub id or a stock checkpoint folder
    >>> ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                    image_size=32, patch_size=8)).save_pretrained(base)
    >>> folder = export_model(base, "vit-base-patch16-224", out, overrides={"r": 2})
    >>> (folder / "config.json").exists()
    True
    ```
    """
    import turbo_hf

    spec = load_preset(preset)
    model_class = getattr(turbo_hf, spec["model_class"], None)
    if model_class is None:
        raise ValueError(f"Preset {spec['name']!r} names {spec['model_class']!r}, which turbo_hf does not provide.")
    settings = {**spec["turbo_config"], **(overrides or {})}
    if "flops_ratio" in (overrides or {}):
        settings.pop("r", None)
    turbo_config = TurboConfig(**settings)
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


__all__ = ["export_model"]
