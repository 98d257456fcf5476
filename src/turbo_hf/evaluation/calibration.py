"""Calibration: pick Turbo's alpha (and where the semantic term starts) for a model and a budget.

The choice is made by fidelity to the stock model on a few unlabeled images: the cosine similarity between
the pooled features of the stock model and those of each candidate setting, at the same reduction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.merging import unmerged_hidden_states
from ..modeling.patching import apply_turbo, get_turbo_config, remove_turbo, turbo
from ..modeling.registry import find_adapter

logger = logging.get_logger(__name__)


def pooled_features(output) -> torch.Tensor:
    """The features a user reads from a vision model's output, as (B, D).

    `image_embeds` or `logits` when the model has them; otherwise the pooled output (or [CLS]) joined with
    the mean over all (unmerged) tokens, so both the summary token and the token map are compared.
    """
    for name in ("image_embeds", "logits"):
        value = getattr(output, name, None)
        if value is not None:
            return value.flatten(1)
    hidden = unmerged_hidden_states(output)
    pooled = output.pooler_output if getattr(output, "pooler_output", None) is not None else hidden[:, 0]
    return torch.cat([pooled, hidden.mean(dim=1)], dim=-1)


@torch.inference_mode()
def extract_features(
    model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 16, progress: str | None = None
) -> torch.Tensor:
    """`pooled_features` of a model over a stack of images, in batches, on the model's device.

    Two-tower models (CLIP, SigLIP) are read through `get_image_features`.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    forward = getattr(model, "get_image_features", model)
    chunks = range(0, len(pixel_values), batch_size)
    features = []
    for start in tqdm(chunks, desc=progress, disable=progress is None, leave=False):
        batch = pixel_values[start : start + batch_size].to(device=device, dtype=dtype)
        features.append(pooled_features(forward(pixel_values=batch)).float().cpu())
    return torch.cat(features)


def fidelity(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two feature matrices."""
    return torch.nn.functional.cosine_similarity(reference, candidate, dim=-1).mean().item()


def default_candidates(num_layers: int) -> list[dict]:
    """The settings `calibrate` compares by default: ToMe, and Turbo with several scales, weights and starts."""
    candidates: list[dict] = [{"mode": "tome"}]
    grid = {"length": (0.02, 0.05, 0.1, 0.2), "rank": (0.1, 0.25), "zscore": (0.1, 0.25)}
    for scale, alphas in grid.items():
        for alpha in alphas:
            for start in (0, num_layers // 2):
                candidates.append(
                    {"mode": "turbo", "alpha_scale": scale, "alpha": alpha, "semantic_start_layer": start}
                )
    return candidates


@dataclass
class CalibrationResult:
    """The chosen settings and the fidelity of every candidate (highest first).

    Attributes:
        config: the best `TurboConfig`.
        fidelity: its mean cosine similarity to the stock features.
        table: one row per candidate: its settings and fidelity.
    """

    config: TurboConfig
    fidelity: float
    table: list[dict] = field(default_factory=list)


def calibrate(
    model: nn.Module,
    pixel_values: torch.Tensor,
    *,
    r: int | list[int] | None = None,
    flops_ratio: float | None = None,
    candidates: list[dict] | None = None,
    base: TurboConfig | None = None,
    batch_size: int = 16,
    show_progress: bool = True,
) -> CalibrationResult:
    """Choose Turbo settings for `model` at a reduction, by fidelity to the stock model's features.

    Args:
        model: a supported model, stock or patched (compared with its stock self; left as it was).
        pixel_values: a few unlabeled images, preprocessed for the model (32 are usually enough).
        r / flops_ratio: the reduction to calibrate for (exactly one of them).
        candidates: settings to compare (dicts of `TurboConfig` fields); `default_candidates` if None.
        base: other settings every candidate shares (`min_tokens`, `schedule`, ...).
        batch_size: images per forward pass.
        show_progress: show a tqdm bar over candidates.

    Example:

    ```python
    >>> import torch
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf import calibrate
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=64, image_size=32, patch_size=4)).eval()
    >>> result = calibrate(model, torch.randn(4, 3, 32, 32), r=4, show_progress=False)
    >>> result.config.r
    4
    ```
    """
    if (r is None) == (flops_ratio is None):
        raise ValueError("`calibrate` needs exactly one of `r` and `flops_ratio`.")
    base_settings = base.settings() if base is not None else {}
    base_settings.pop("r", None)
    base_settings.pop("flops_ratio", None)
    patched_with = get_turbo_config(model)
    if patched_with is not None:
        remove_turbo(model)
    reference = extract_features(model, pixel_values, batch_size)
    if candidates is None:
        adapter = find_adapter(model)
        candidates = default_candidates(len(adapter.layers(adapter.vision_models(model)[0])))
    rows = []
    for settings in tqdm(candidates, desc="calibrating", disable=not show_progress):
        config = TurboConfig(**{**base_settings, **settings, "r": r, "flops_ratio": flops_ratio})
        with turbo(model, config):
            score = fidelity(reference, extract_features(model, pixel_values, batch_size))
        rows.append({**settings, "fidelity": score})
        logger.info(f"calibrate: {settings} -> fidelity {score:.5f}")
    if patched_with is not None:
        apply_turbo(model, patched_with)
    rows.sort(key=lambda row: row["fidelity"], reverse=True)
    best = {k: v for k, v in rows[0].items() if k != "fidelity"}
    config = TurboConfig(**{**base_settings, **best, "r": r, "flops_ratio": flops_ratio})
    return CalibrationResult(config=config, fidelity=rows[0]["fidelity"], table=rows)


__all__ = ["CalibrationResult", "calibrate", "default_candidates", "extract_features", "fidelity", "pooled_features"]
