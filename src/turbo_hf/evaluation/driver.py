"""Shared machinery of the evaluation scripts (`scripts/eval_*.py`) and of `turbo-hf bench`.

- Settings: the modes compared in one run (`stock`, `random`, `tome`, `semantic`, `turbo`) at several `r`,
  with the other Turbo settings from a preset (shipped with the package).
- `Runner`: data parallelism with Accelerate (whole global batches dealt out to processes, so batch
  composition and results do not depend on the number of processes; per-sample results gathered to every
  process; only the main process writes). One process on CPU needs no launcher.
- Data through `datasets`: a Hub dataset name, a local `imagefolder` directory, or a JSON-lines file of
  image paths with captions / questions / labels.
- Measurement: warm-up, interleaved rounds, medians, synchronisation on GPU, throughput, latency, peak
  memory (CUDA allocator or process RSS), FLOPs counted with `torch.utils.flop_counter`.
- Output: a JSON file (results + machine, library versions, settings), a markdown table and a plot of
  quality against measured speed-up with one line per mode.

Heavy optional libraries (accelerate, datasets, matplotlib) are imported where they are used. This module
holds the driver and the command-line helpers, and is the one the scripts import from; the pieces live in
`settings`, `runner`, `data`, `loading`, `measurement` and `report`. The benchmark scripts use `backbone`,
`probe`, `images`, `tables` and `arguments`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..modeling.patching import is_turbo_applied, remove_turbo
from .data import load_data, require_columns, row_texts, split_columns, text_values, to_rgb
from .loading import (
    CAPTION_PROMPTS,
    CLASSIFICATION_FAMILIES,
    GENERATIVE_FAMILIES,
    RETRIEVAL_FAMILIES,
    VQA_PROMPTS,
    check_family,
    decode_generated,
    generation_inputs,
    image_preprocessor,
    inputs_by_setting,
    interpolation_kwargs,
    load_model,
    load_processor,
    model_type_of,
)
from .report import as_tensor, markdown_table, results_table, run_metadata, save_results, token_features
from .runner import Runner, run_batches, shard_batches
from .settings import (
    MODE_LABELS,
    MODE_ORDER,
    MODE_STYLES,
    Setting,
    UsageError,
    build_settings,
    check_settings,
    parse_ints,
    parse_modes,
    preset_base,
    setting_plan,
    use_setting,
    vision_patch_grid,
)
from .local_paths import check_local_path
from .measurement import count_flops, measure_settings


# ------------------------------------------------------------------------------------------ the driver


def evaluate_settings(
    runner: Runner,
    model: nn.Module,
    settings: Sequence[Setting],
    evaluate: Callable[[Setting], dict | None],
    timing_call: Callable[[], object] | None,
    timing_batch_size: int,
    timing_pixels: torch.Tensor | None,
    warmup: int = 1,
    repeats: int = 5,
    flops: bool = True,
) -> list[dict] | None:
    """Evaluate every setting (quality on all processes, `evaluate(setting)` returns the metrics on the main
    process), then time `timing_call` under every setting on the main process while the others wait.

    Returns the rows (on the main process; None elsewhere): name, mode, r, Turbo settings, plan (token
    counts, FLOP fraction), metrics and speed.
    """
    check_settings(model, settings)
    rows = []
    for setting in settings:
        runner.print(f"[{setting.name}] evaluating ...")
        use_setting(model, setting)
        try:
            metrics = evaluate(setting)
        finally:
            if is_turbo_applied(model):
                remove_turbo(model)
        if runner.is_main:
            shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
            runner.print(f"[{setting.name}] " + ", ".join(f"{k}={v:.3f}" for k, v in shown.items()))
        rows.append({**setting.summary(), "metrics": metrics, "plan": setting_plan(model, setting, timing_pixels)})
    speed = {}
    if runner.is_main and timing_call is not None:
        runner.print(f"timing {len(settings)} settings: {warmup} warm-up + {repeats} timed rounds ...")
        speed = measure_settings(model, settings, timing_call, timing_batch_size, runner.device, warmup, repeats, flops=flops)
    runner.wait()
    if not runner.is_main:
        return None
    for row in rows:
        row["speed"] = speed.get(row["name"])
    return rows


def write_outputs(
    runner: Runner,
    args,
    task: str,
    rows: list[dict] | None,
    metrics: Sequence[tuple[str, str]],
    title: str,
    notes: str = "",
    extra: dict | None = None,
    plot_metrics: Sequence[tuple[str, str]] | None = None,
) -> dict | None:
    """On the main process: write `<name>.json`, `<name>.md`, `<name>.png` into `args.out`, print the table.

    Returns the payload (None on other processes).
    """
    if not runner.is_main or rows is None:
        return None
    settings = {k: v for k, v in vars(args).items() if not callable(v)}
    payload = {"task": task, "metadata": run_metadata(runner, **settings), **(extra or {}), "rows": rows}
    table = results_table(rows, metrics)
    meta = payload["metadata"]
    run_lines = [
        f"- date {meta['date']}; {meta['processes']} process(es) on {meta['device']}; "
        f"{meta['machine']['cpu_model']} ({meta['machine']['cpu_count']} CPUs), GPUs: {meta['machine']['gpus'] or 'none'}",
        "- " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- command: `{meta['command']}`",
    ]
    timing = next((row["speed"] for row in rows if row.get("speed")), None)
    speed_note = (
        f"Speed: median of {timing['repeats']} interleaved timed rounds after {timing['warmup']} warm-up "
        f"round(s), batch {timing['batch_size']}, on the main process; speed-up = stock median / setting "
        f"median, measured in this run. FLOP limit = 1 / the vision encoder's FLOP fraction kept."
        if timing else "Speed: not measured."
    )
    markdown = "\n\n".join(part for part in [f"# {title}", notes, speed_note, table, "## Run", "\n".join(run_lines)] if part)
    paths = save_results(args.out, args.name or task, payload, markdown, plot_metrics or metrics, title)
    print("\n" + table + "\n")
    print("wrote " + ", ".join(paths.values()), flush=True)
    return payload


# ------------------------------------------------------------------------------------------------ CLI


def add_common_arguments(parser, batch_size: int = 16) -> None:
    """The arguments every evaluation script shares."""
    parser.add_argument("--model", required=True, type=_local_or_hub,
                        help="model folder or Hub id (stock or Turbo checkpoint)")
    parser.add_argument("--dataset", required=True, type=_local_or_hub,
                        help="Hub dataset name, an imagefolder directory, or a .jsonl file of image paths + fields")
    parser.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    parser.add_argument("--split", default=None, help="split (default: test, validation, val or train)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep rows whose column equals the value (repeatable), e.g. split=test")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="evaluate N rows: spread over the classes when the data has classes (a label column, "
                             "e.g. an imagefolder's), chosen with --sample-seed; else the first N rows")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the rows --max-samples picks (default: 0)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--modes", type=_mode_type, default=["stock", "tome", "turbo"],
                        help="comma-separated modes: none (=stock), random, tome, semantic, turbo")
    parser.add_argument("--r", type=_r_type, default=None,
                        help="comma-separated tokens removed per layer, e.g. 0,16,30 (default: the preset's r)")
    parser.add_argument("--turbo-preset", default=None,
                        help="shipped preset name (e.g. dinov2-small) or a preset JSON: Turbo settings other than r")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    parser.add_argument("--attn", choices=["eager", "sdpa"], default=None, help="attention implementation")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--timing-batch-size", type=int, default=None, help="batch timed (default: --batch-size)")
    parser.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    parser.add_argument("--out", default="eval_results", help="output folder")
    parser.add_argument("--name", default=None, help="output file stem (default: the task name)")


def _local_or_hub(text: str) -> str:
    """A Hub id, or a local path that exists (a missing one fails here instead of after Hub retries)."""
    import argparse

    try:
        return check_local_path(text, "the argument")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"the local path {text!r} does not exist (a Hub id looks like org/name)") from error


def _mode_type(text: str) -> list[str]:
    import argparse

    try:
        return parse_modes(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _r_type(text: str) -> list[int]:
    import argparse

    try:
        return parse_ints(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def settings_from_args(args) -> list[Setting]:
    """Settings from `--modes`, `--r` and `--turbo-preset` (the other shared arguments are checked too)."""
    if args.batch_size < 1 or (getattr(args, "timing_batch_size", None) or 1) < 1:
        raise UsageError("--batch-size and --timing-batch-size must be >= 1.")
    if getattr(args, "repeats", 1) < 1 or getattr(args, "warmup", 0) < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0.")
    if getattr(args, "max_samples", None) is not None and args.max_samples < 1:
        raise UsageError("--max-samples must be >= 1.")
    base, preset_r = preset_base(args.turbo_preset)
    r_values = args.r if args.r is not None else ([preset_r] if preset_r is not None else None)
    if r_values is None:
        if set(args.modes) - {"stock"}:
            raise UsageError("Give --r (e.g. --r 0,16) or a --turbo-preset that sets r.")
        r_values = [0]
    return build_settings(args.modes, r_values, base)


def cli_main(run: Callable[[list[str] | None], int | None], argv: list[str] | None, prog: str) -> int:
    """Run a script's `run(argv)`; a usage error or an unsupported model ends with its message on stderr and
    exit code 2 (argparse errors already do), not a traceback."""
    try:
        return run(argv) or 0
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError) as error:
        print(f"{prog}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


__all__ = [
    "CAPTION_PROMPTS",
    "CLASSIFICATION_FAMILIES",
    "GENERATIVE_FAMILIES",
    "MODE_LABELS",
    "MODE_ORDER",
    "MODE_STYLES",
    "RETRIEVAL_FAMILIES",
    "Runner",
    "Setting",
    "UsageError",
    "VQA_PROMPTS",
    "add_common_arguments",
    "as_tensor",
    "build_settings",
    "check_family",
    "check_settings",
    "cli_main",
    "count_flops",
    "decode_generated",
    "evaluate_settings",
    "generation_inputs",
    "image_preprocessor",
    "inputs_by_setting",
    "interpolation_kwargs",
    "load_data",
    "load_model",
    "load_processor",
    "markdown_table",
    "measure_settings",
    "model_type_of",
    "parse_ints",
    "parse_modes",
    "preset_base",
    "require_columns",
    "results_table",
    "row_texts",
    "run_batches",
    "run_metadata",
    "save_results",
    "setting_plan",
    "settings_from_args",
    "shard_batches",
    "split_columns",
    "text_values",
    "to_rgb",
    "token_features",
    "use_setting",
    "vision_patch_grid",
    "write_outputs",
]
