"""The main job: Turbo on the real DINOv2-S/14, measured against the stock model on real photos."""

from __future__ import annotations

import copy
import json
import os
import platform
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModel
from transformers.utils import logging

from ..evaluation.calibration import fidelity, pooled_features
from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo, turbo_plan
from ..testing.real_weights import fetch_real_weights
from ..testing.sample_images import builtin_photos
from ..evaluation.timing import interleaved_times, timing_summary
from ..evaluation.visualization import denormalize, draw_merges, merge_groups, side_by_side

logger = logging.get_logger(__name__)

# a timing whose rounds spread more than this (max - min over the median) is flagged as unreliable
SPREAD_LIMIT = 0.10


def timing_warnings(report: dict) -> list[str]:
    """Why the demo's speed-up may not be trusted: spread between rounds, a busy machine, efficiency above 100 %."""
    found = []
    for name in ("stock", "turbo"):
        spread = report[f"{name}_timing"]["spread"]
        if spread > SPREAD_LIMIT:
            found.append(f"{name} timings spread {spread:.0%} between rounds (over {SPREAD_LIMIT:.0%}): the machine "
                         "is busy or noisy, so the speed-up is unreliable; rerun on a quiet machine or with more --repeats.")
    load, cpus, threads = report["machine"]["load_average"], report["machine"]["cpus"], report["machine"]["threads"]
    if load is not None and cpus and load + threads > cpus + 1:
        found.append(f"load average {load:.1f} on {cpus} CPUs before timing with {threads} threads: other work "
                     "competes for the cores, so the speed-up is unreliable.")
    if report["speedup"] > report["flops_speed_limit"] * 1.05:
        found.append(f"measured speed-up {report['speedup']:.2f}x exceeds the FLOP limit "
                     f"{report['flops_speed_limit']:.2f}x (efficiency {report['speedup'] / report['flops_speed_limit']:.0%}): "
                     "the stock rounds were slowed by something else.")
    return found


def format_report(report: dict) -> str:
    """The demo's measurements as a short markdown table."""
    rows = [
        ("model", report["model"]),
        ("Turbo", ", ".join(f"{k}={v}" for k, v in report["turbo_config"].items() if v is not None)),
        ("tokens", f"{report['tokens_in']} -> {report['tokens_out']} (schedule {report['schedule']})"),
        ("FLOP speed limit", f"{report['flops_speed_limit']:.2f}x"),
        *[
            (f"{label}, batch of {report['batch_size']}",
             f"{t['median'] * 1000:.0f} ms (min {t['min'] * 1000:.0f}, max {t['max'] * 1000:.0f})")
            for label, t in (("stock", report["stock_timing"]), ("Turbo", report["turbo_timing"]))
        ],
        ("measured speed-up", f"{report['speedup']:.2f}x (median of {report['repeats']} interleaved rounds, "
                              f"{report['machine']['threads']} threads)"),
        ("[CLS] cosine to stock", f"{report['cls_cosine']:.4f}"),
        ("[CLS]+mean cosine to stock", f"{report['feature_cosine']:.4f}"),
        ("picture", report["picture"]),
    ]
    table = "\n".join(["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])
    return table + "".join(f"\n\nWarning: {warning}" for warning in report.get("warnings", []))


def run_demo(
    config: TurboConfig,
    *,
    model_path: str | os.PathLike | None = None,
    image_size: int = 224,
    batch_size: int = 16,
    repeats: int = 5,
    out_dir: str | os.PathLike = "outputs",
) -> dict:
    """Apply Turbo to the real DINOv2 (or `model_path`), report speed-up and fidelity, draw the merges.

    Writes `merged_patches.png` and `demo.json` into `out_dir` and returns the measurements. `image_size`,
    `batch_size` and `repeats` must be positive integers, and `image_size` at least the model's patch size
    (other sizes crop to whole patches); a bad value raises a `ValueError` naming it before any work.

    Example:

    ```python
    >>> from turbo_hf import TurboConfig
    >>> from turbo_hf.cli.demo import run_demo
    >>> report = run_demo(TurboConfig(r=16), batch_size=4, repeats=1)  # doctest: +SKIP
    ```
    """
    for name, value in (("image_size", image_size), ("batch_size", batch_size), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` (--{name.replace('_', '-')}) must be a positive integer, got {value!r}.")
    # the load of the machine before the demo's own work adds to it: other jobs competing for the cores
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    path = Path(model_path) if model_path is not None else fetch_real_weights()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    patch_size = model.config.patch_size
    if image_size < patch_size:  # smaller than one patch: no token at all
        raise ValueError(
            f"`image_size` (--image-size) {image_size} is smaller than the model's patch size {patch_size}: use at "
            f"least {patch_size} (multiples of {patch_size} use every pixel)."
        )
    processor = AutoImageProcessor.from_pretrained(path)
    photos = builtin_photos()
    crop = {"height": image_size, "width": image_size}
    pixel_values = processor(
        images=[image for _, image in photos], size={"shortest_edge": image_size}, crop_size=crop, return_tensors="pt"
    )["pixel_values"]
    batch = pixel_values.repeat((batch_size + len(photos) - 1) // len(photos), 1, 1, 1)[:batch_size]

    turbo_model = apply_turbo(copy.deepcopy(model), config)  # timed as it is: no patching inside timed calls
    with torch.inference_mode():
        stock = model(pixel_values=pixel_values)
        merged = turbo_model(pixel_values=pixel_values)
        plan = turbo_plan(turbo_model, stock.last_hidden_state.shape[1])
        samples = interleaved_times(
            {"stock": lambda: model(pixel_values=batch), "turbo": lambda: turbo_model(pixel_values=batch)},
            repeats=repeats,
            rotate=True,
        )
    stock_timing, turbo_timing = timing_summary(samples["stock"]), timing_summary(samples["turbo"])

    report = {
        "model": str(path),
        "turbo_config": config.settings(),
        "image_size": image_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "tokens_in": plan["token_counts"][0],
        "tokens_out": plan["token_counts"][-1],
        "schedule": plan["schedule"],
        "flops_speed_limit": 1 / plan["flops_fraction"],
        "stock_timing": stock_timing,
        "turbo_timing": turbo_timing,
        "speedup": stock_timing["median"] / turbo_timing["median"],
        "cls_cosine": fidelity(stock.pooler_output, merged.pooler_output),
        "feature_cosine": fidelity(pooled_features(stock), pooled_features(merged)),
        "photos": [name for name, _ in photos],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_average": load_before,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patch = model.config.patch_size
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    pairs = []
    for index in range(len(photos)):
        image = denormalize(pixel_values[index], processor.image_mean, processor.image_std)
        groups = merge_groups(merged.token_source[index], grid, has_cls=True)
        pairs.append((Image.fromarray(image), draw_merges(image, groups)))
    picture = out / "merged_patches.png"
    side_by_side(pairs).save(picture)
    report["picture"] = str(picture)
    report["warnings"] = timing_warnings(report)
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    return report
