"""`turbo-hf bench`: speed of every mode against the stock model.

`run_bench` times one batch of random images through the model under the stock setting and every mode at
every `r`, for every batch size, with the measurement of `turbo_hf.evaluation.driver.measure_settings` (warm-up,
interleaved rounds, medians, GPU synchronisation, throughput, latency, peak memory, FLOPs counted by
`torch.utils.flop_counter`), and writes `bench.json`, `bench.md` and `bench.png`. The images are sized as the
checkpoint's image processor sizes them (`processor_image_size`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from .devices import resolve_device
from .driver import (
    MODE_LABELS,
    MODE_ORDER,
    MODE_STYLES,
    UsageError,
    build_settings,
    check_settings,
    interpolation_kwargs,
    load_model,
    markdown_table,
    measure_settings,
    parse_modes,
    preset_base,
    run_metadata,
    setting_plan,
)
from ..modeling.patching import apply_turbo, is_turbo_applied, remove_turbo
from ..modeling.registry import find_adapter
from .timing import timing_warnings

logger = logging.get_logger(__name__)

# The largest input size `processor_image_size` takes from a config when no image processor is saved.
DEFAULT_IMAGE_SIZE = 224


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """`resolve_device`, with a `UsageError` naming `device` and the available devices."""
    try:
        return resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from error


def processor_image_size(path: str | os.PathLike | None, model: nn.Module) -> int:
    """The square resolution a checkpoint's saved image processor feeds its model: `crop_size` when it centre
    crops, else `size` (height or shortest edge). Without one, the model's `config.image_size` capped at
    `DEFAULT_IMAGE_SIZE` (224): DINOv2 checkpoints say 518 px there (their position grid) but are used at 224 px.

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf.evaluation.benchmarking import processor_image_size
    >>> tiny = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32))
    >>> processor_image_size(None, tiny)  # no processor saved: the config's size, at most 224
    32
    ```
    """
    from transformers import AutoImageProcessor

    processor = None
    if path is not None and str(path):
        try:
            processor = AutoImageProcessor.from_pretrained(str(path))
        except Exception:  # no processor saved (or none Transformers can load)
            processor = None
    if processor is not None:
        sizes = [getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None,
                 getattr(processor, "size", None)]
        for size in filter(None, sizes):
            for key in ("height", "shortest_edge"):
                if size.get(key):
                    return int(size[key])
    config = getattr(model.config, "vision_config", None) or model.config
    size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE)
    return min(size[0] if isinstance(size, (list, tuple)) else size, DEFAULT_IMAGE_SIZE)


def _accepts(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def bench_target(model: nn.Module):
    """(description, callable(pixel_values)) of the image work timed for a model.

    Image-only models run their whole forward; models with `get_image_features` (CLIP, SigLIP, BLIP-2,
    LLaVA, ...) run it; other vision-language models (BLIP captioning / VQA / retrieval) run their vision
    encoder, the part Turbo changes.
    """
    forward_takes_text = _accepts(model.forward, "input_ids")
    if not forward_takes_text and _accepts(model.forward, "pixel_values"):
        return "forward", lambda pixels: model(pixel_values=pixels, **interpolation_kwargs(model.forward, model, pixels))
    if hasattr(model, "get_image_features"):
        function = model.get_image_features
        return "get_image_features", lambda pixels: function(pixel_values=pixels, **interpolation_kwargs(function, model, pixels))
    try:
        vision = find_adapter(model).vision_models(model)[0]
    except ValueError as error:
        raise UsageError(str(error)) from error
    if not _accepts(vision.forward, "pixel_values"):
        raise UsageError(f"`turbo-hf bench` times image encoders; {type(model).__name__} takes no images.")
    return "vision encoder", lambda pixels: vision(pixel_values=pixels, **interpolation_kwargs(vision.forward, model, pixels))


def run_bench(
    model_path_or_model: str | os.PathLike | nn.Module,
    r_values: Sequence[int] = (0, 8, 16),
    batch_sizes: Sequence[int] = (1, 8),
    modes: Sequence[str] | str = ("tome", "turbo"),
    image_size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = "auto",
    out_dir: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    dtype: str | None = None,
    attn: str | None = None,
    flops: bool = True,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """Speed of the stock model and of every mode at every `r`, for every batch size, measured in one run.

    Args:
        model_path_or_model: a model folder or Hub id (stock or Turbo checkpoint), or a model object (it is
            left unpatched afterwards).
        r_values: tokens removed per layer; 0 is the stock model (always measured: it is the reference).
        batch_sizes: batch sizes to time.
        modes: `tome`, `turbo`, `semantic`, `random` (a list or a comma-separated string; `none` / `stock`
            are ignored since the stock model is always included).
        image_size: square input size in pixels (default: `processor_image_size`, the resolution of the
            checkpoint's image processor); other sizes interpolate position embeddings where the model needs it.
        repeats: timed rounds; each round runs every setting once, in rotating order; the median is reported.
        warmup: untimed rounds first.
        device: `"auto"` (CUDA when available), `"cpu"`, `"cuda"`, `"cuda:1"`, ...; one this machine lacks
            raises a `UsageError` naming the available devices before the model is loaded.
        out_dir: when given, `bench.json`, `bench.md` and `bench.png` are written there.
        preset: a preset name shipped with the package (or a preset JSON path) giving the other Turbo settings.
        dtype: `"float32"`, `"float16"` or `"bfloat16"` when loading from a path.
        attn: attention implementation when loading from a path (`"sdpa"`, `"eager"`).
        flops: count FLOPs with `torch.utils.flop_counter` (one extra call per setting).
        seed: seed of the random input images.
        progress: show progress bars.
        threads: torch threads while timing (None: torch's current count; `turbo-hf bench` uses one).

    Returns:
        `{"metadata": ..., "model": ..., "target": ..., "image_size": ..., "rows": [...], "files": {...}}`;
        each row has `batch_size`, `name`, `mode`, `r`, `turbo_config`, `plan` (token counts, FLOP fraction and
        FLOP speed limit of the vision encoder) and `speed` (`median_ms`, `min_ms`, `max_ms`, `q1_ms`, `q3_ms`,
        `iqr_spread`, `latencies_ms`, `throughput` in images/s, `speedup` over the stock model at that batch
        size, `flops`, `gflops_per_sample`, `memory`, `machine`); `warnings` say when the timing cannot be trusted
        (`turbo_hf.evaluation.timing.timing_warnings`, also logged).

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf.evaluation.benchmarking import run_bench
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=64, image_size=32, patch_size=8))
    >>> result = run_bench(model, r_values=[0, 2], batch_sizes=[2], modes="tome", repeats=1, progress=False)
    >>> [row["name"] for row in result["rows"]]
    ['stock', 'tome r=2']
    ```
    """
    device = _resolve_device(device)
    if isinstance(model_path_or_model, nn.Module):
        model, model_name = model_path_or_model, type(model_path_or_model).__name__
        was_patched = getattr(model, "_turbo_patch", None)
        if is_turbo_applied(model):
            remove_turbo(model)
        model.eval()
    else:
        model_name, was_patched = str(model_path_or_model), None
        model = load_model(str(model_path_or_model), ["AutoModel"], dtype, attn)
    original_device = next(model.parameters()).device
    model.to(device)
    modes = parse_modes(modes) if modes else []
    if not r_values or any((not isinstance(r, int)) or r < 0 for r in r_values):
        raise UsageError(f"`r_values` must be non-negative integers, got {r_values!r}.")
    if not batch_sizes or any((not isinstance(b, int)) or b < 1 for b in batch_sizes):
        raise UsageError(f"`batch_sizes` must be positive integers, got {batch_sizes!r}.")
    base, _ = preset_base(preset)
    settings = build_settings(modes, list(r_values), base)
    check_settings(model, settings)
    source = getattr(model, "name_or_path", None) if isinstance(model_path_or_model, nn.Module) else model_path_or_model
    size = image_size or processor_image_size(source, model)
    target, call = bench_target(model)
    model_dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    rows, warnings = [], []
    try:
        for batch_size in batch_sizes:
            pixels = torch.randn(batch_size, 3, size, size, generator=generator).to(device, model_dtype)
            speed = measure_settings(
                model, settings, lambda: call(pixels), batch_size, device, warmup, repeats,
                flops=flops, progress=progress, threads=threads, warn=False,
            )
            batch_rows = [{"batch_size": batch_size, **setting.summary(), "plan": setting_plan(model, setting, pixels),
                           "speed": speed[setting.name]} for setting in settings]
            rows += batch_rows
            summary = {row["name"]: {"iqr_spread": row["speed"]["iqr_spread"]} for row in batch_rows}
            limits = {row["name"]: (row["speed"]["speedup"], row["plan"]["flops_speed_limit"])
                      for row in batch_rows if row["mode"] != "stock"}
            found = timing_warnings(summary, speed["stock"]["machine"], limits)
            warnings += [f"batch {batch_size}: {warning}" for warning in found]
    finally:
        if is_turbo_applied(model):
            remove_turbo(model)
        if isinstance(model_path_or_model, nn.Module):
            model.to(original_device)
            if was_patched is not None:
                apply_turbo(model, was_patched.config)
    result = {
        "metadata": run_metadata(None, r_values=list(r_values), batch_sizes=list(batch_sizes), modes=modes,
                                 image_size=size, repeats=repeats, warmup=warmup, device=str(device), preset=preset,
                                 dtype=dtype, attn=attn, seed=seed, threads=threads),
        "model": model_name,
        "model_class": type(model).__name__,
        "target": target,
        "image_size": size,
        "rows": rows,
        "warnings": warnings,
    }
    for warning in warnings:
        logger.warning(f"turbo-hf bench: {warning}")
    if out_dir is not None:
        result["files"] = write_bench(result, out_dir)
    return result


def bench_markdown(result: dict) -> str:
    """The markdown report of a `run_bench` result."""
    headers = ["batch", "setting", "final tokens", "FLOP limit", "measured speed-up", "efficiency", "ms / batch",
               "images/s", "GFLOPs / image", "peak MB"]
    body = []
    for row in result["rows"]:
        speed, plan = row["speed"], row["plan"]
        memory = speed.get("memory") or {}
        limit = plan["flops_speed_limit"]
        body.append([
            row["batch_size"], row["name"], plan["final_tokens"] or "all", f"{limit:.2f}x", f"{speed['speedup']:.2f}x",
            f"{speed['speedup'] / limit:.0%}", f"{speed['median_ms']:.1f} ({speed['q1_ms']:.1f}-{speed['q3_ms']:.1f})",
            f"{speed['throughput']:.1f}",
            f"{speed['gflops_per_sample']:.3g}" if speed.get("gflops_per_sample") is not None else "n/a",
            f"{memory['peak_mb']:.0f}" if memory.get("peak_mb") is not None else "n/a",
        ])
    meta = result["metadata"]
    first = result["rows"][0]["speed"]
    machine = first.get("machine") or {}
    load = machine.get("load_average")
    lines = [
        f"# turbo-hf bench: {result['model']} ({result['model_class']}, {result['image_size']} px, {result['target']})",
        f"Median of {first['repeats']} interleaved rounds after {first['warmup']} warm-up round(s) on "
        f"{meta['settings']['device']} with {machine.get('threads', 'n/a')} torch thread(s) on "
        f"{machine.get('cpus', 'n/a')} CPUs (load average {'n/a' if load is None else f'{load:.1f}'} before timing); "
        "ms / batch: median (interquartile range); speed-up = stock median / setting median at the same batch size; "
        "FLOP limit = 1 / the vision encoder's FLOP fraction kept; efficiency = speed-up / limit. Peak memory: "
        f"{(first.get('memory') or {}).get('kind', 'n/a')}.",
        markdown_table(headers, body),
        *[f"**Warning**: {warning}" for warning in result.get("warnings", [])],
        f"- {meta['date']}; {meta['machine']['cpu_model']} ({meta['machine']['cpu_count']} CPUs), GPUs: "
        f"{meta['machine']['gpus'] or 'none'}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
    ]
    return "\n\n".join(lines) + "\n"


def plot_bench(result: dict, path: str | os.PathLike) -> Path | None:
    """Measured speed-up against r, one line per mode, one panel per batch size (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written (pip install 'turbo-hf[eval]').")
        return None
    batch_sizes = sorted({row["batch_size"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(batch_sizes), figsize=(5 * len(batch_sizes), 3.8), squeeze=False)
    for axis, batch_size in zip(axes[0], batch_sizes):
        rows = [row for row in result["rows"] if row["batch_size"] == batch_size]
        stock = next(row for row in rows if row["mode"] == "stock")
        for mode in MODE_ORDER[1:]:
            points = sorted((row for row in rows if row["mode"] == mode), key=lambda row: row["r"])
            if not points:
                continue
            colour, marker = MODE_STYLES[mode]
            points = [stock] + points
            axis.plot([p["r"] for p in points], [p["speed"]["speedup"] for p in points], color=colour, marker=marker,
                      label=MODE_LABELS[mode])
        limits = sorted({(row["r"], row["plan"]["flops_speed_limit"]) for row in rows})
        axis.plot([r for r, _ in limits], [l for _, l in limits], color="black", linestyle="--", label="FLOP limit")
        axis.set_title(f"batch {batch_size}")
        axis.set_xlabel("r (tokens removed per layer)")
        axis.set_ylabel("measured speed-up (x)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_bench(result: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write `bench.json`, `bench.md` and `bench.png` into `out_dir`."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "bench.json"), "markdown": str(out / "bench.md")}
    markdown = bench_markdown(result)
    if plot_bench(result, out / "bench.png") is not None:
        files["plot"] = str(out / "bench.png")
        markdown += "\n![measured speed-up against r](bench.png)\n"
    (out / "bench.md").write_text(markdown)
    (out / "bench.json").write_text(json.dumps({**result, "files": files}, indent=2, default=str) + "\n")
    return files


__all__ = ["DEFAULT_IMAGE_SIZE", "bench_markdown", "bench_target", "plot_bench", "processor_image_size", "run_bench", "write_bench"]
