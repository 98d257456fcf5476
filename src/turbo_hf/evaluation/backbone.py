"""The benchmarks' vision backbone: the real DINOv2-S/14 (or a given folder), its token count, Turbo plans,
the constant `r` for a target speed limit, and the run metadata naming the model."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModel

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo, remove_turbo, turbo_plan
from ..testing.real_weights import MARKER_FILENAME, fetch_real_weights
from .report import run_metadata


def load_backbone(path: str | None, attn: str = "sdpa"):
    """The stock model (eval mode) and the folder it came from; the real DINOv2-S/14 when `path` is None."""
    folder = Path(path) if path else fetch_real_weights()
    return AutoModel.from_pretrained(folder, attn_implementation=attn).eval(), folder


def num_tokens(model, image_size: int) -> int:
    """Tokens the encoder sees for a square image: (image_size / patch)^2 patches + [CLS]."""
    patch = model.config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return (image_size // patch) ** 2 + 1


def plan_for(model, config: TurboConfig, tokens: int) -> dict:
    """`turbo_plan` of `config` at `tokens` tokens (the model is left unpatched)."""
    apply_turbo(model, config)
    try:
        return turbo_plan(model, tokens)
    finally:
        remove_turbo(model)


def r_for_speed_limit(model, tokens: int, target: float, base: dict | None = None, max_r: int = 64) -> int:
    """The constant `r` whose theoretical speed limit (1 / flops_fraction) is closest to `target`."""
    best, best_gap = 0, float("inf")
    for r in range(0, max_r + 1):
        try:
            plan = plan_for(model, TurboConfig(r=r, **(base or {})), tokens)
        except ValueError:
            break
        gap = abs(1 / plan["flops_fraction"] - target)
        if gap < best_gap:
            best, best_gap = r, gap
    return best


def benchmark_metadata(model_folder: Path | None = None, **settings) -> dict:
    """Where and how a benchmark ran (`report.run_metadata`), plus the model it used (and its real-weights marker)."""
    marker = None
    if model_folder is not None and (Path(model_folder) / MARKER_FILENAME).is_file():
        marker = json.loads((Path(model_folder) / MARKER_FILENAME).read_text())
    meta = run_metadata(**settings)
    meta["model"] = {"folder": str(model_folder) if model_folder else None, "real_weights": marker}
    return meta


__all__ = ["benchmark_metadata", "load_backbone", "num_tokens", "plan_for", "r_for_speed_limit"]
