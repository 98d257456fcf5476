"""GPU readiness: the speed table in bf16 at batch 64 (ViT-B/16 and DINOv2-B/14 shapes, random weights), which SDPA
kernel runs with and without Turbo's `log(size)` bias, and that bias as an additive mask against FlexAttention's
`score_mod` (`attn_implementation="turbo_flex"`). Every timed call is synchronised with the device
(`turbo_hf.evaluation.timing.interleaved_times(device=...)`).

    PYTHONPATH=src python scripts/benchmark_gpu.py --device cuda            # on a GPU
    PYTHONPATH=src python scripts/benchmark_gpu.py --device cpu --dry-run   # tiny shapes: checks the path
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.backbone import benchmark_metadata  # noqa: E402
from turbo_hf.evaluation.devices import resolve_device  # noqa: E402
from turbo_hf.evaluation.gpu_benchmark import (  # noqa: E402
    attention_inputs,
    attention_speed,
    model_configs,
    model_speed,
    sdpa_kernels,
)
from turbo_hf.evaluation.tables import markdown_table, publish  # noqa: E402
from turbo_hf.evaluation.timing import load_warning  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--r", type=comma_type(int), default=[8, 16])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, batch 2, r=2, 1 round: checks the path")
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--name", default="gpu_bf16")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        args.batch_size, args.r, args.rounds, args.warmup = 2, [2], 1, 1
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    started = time.perf_counter()
    warning = load_warning(torch.get_num_threads()) if device.type == "cpu" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device {name}  |  {args.dtype}, batch {args.batch_size}  |  {args.warmup} warm-up + {args.rounds} "
          f"rounds, synchronised  |  torch threads {torch.get_num_threads()}")
    if warning:
        print(f"WARNING: {warning}")

    tokens = 5 if args.dry_run else 197
    heads, head_dim = (2, 16) if args.dry_run else (12, 64)
    q, k, v, bias = attention_inputs(args.batch_size, heads, tokens, head_dim, device, dtype)
    kernels = sdpa_kernels(q, k, v, bias)
    attention = attention_speed(q, k, v, bias, args.rounds, args.warmup, device)

    rows = []
    for model_name, (model_class, config) in model_configs(args.dry_run).items():
        for row in model_speed(model_class, config, args.r, args.batch_size, dtype, device, args.rounds, args.warmup):
            rows.append({"model": model_name, **row})
    table = markdown_table(
        ["model", "setting", "tokens", "FLOP limit", "speed-up", "median ms", "spread", "img/s"],
        [[row["model"], row["setting"], row["tokens"], f"{row['flop_limit']:.2f}x", f"{row['speedup']:.2f}x",
          f"{1000 * row['median']:.2f}", f"{100 * row['spread']:.0f}%", f"{row['images_per_s']:.1f}"] for row in rows],
    )
    kernel_table = markdown_table(
        ["SDPA backend alone", "no bias", "log(size) bias"],
        [[backend, *["runs" if ok is True else f"refused: {ok}" for ok in cases.values()]]
         for backend, cases in kernels.items()],
    )
    attention_table = markdown_table(
        [f"attention ({args.batch_size}x{heads}x{tokens}x{head_dim})", "median ms", "spread"],
        [[call, f"{1000 * s['median']:.3f}", f"{100 * s['spread']:.0f}%"] for call, s in attention.items()],
    )
    difference = next(iter(attention.values()))["max_abs_diff_flex_vs_sdpa"]
    meta = benchmark_metadata(None, **vars(args))
    meta.update(runtime_s=time.perf_counter() - started, device_name=name, sdpa_kernels=kernels,
                attention=attention, load_warning=warning)
    notes = (
        f"Device {name}, {args.dtype}, random weights, batch {args.batch_size}; {args.warmup} warm-up + "
        f"{args.rounds} interleaved rounds, each call synchronised with the device; spread = (max - min) / median. "
        f"Turbo rows: `TurboConfig(r)` on SDPA (the bias as an additive float mask) and, at the largest r, on "
        f"`turbo_flex` (FlexAttention, the bias as a `score_mod`, compiled off the CPU). Max |turbo_flex - SDPA| "
        f"on the attention call: {difference:.2e}." + (" Dry run: tiny shapes." if args.dry_run else "")
        + (f"\n\n**{warning}.**" if warning else "") + "\n\n" + kernel_table + "\n\n" + attention_table
    )
    title = f"# GPU readiness: {args.dtype}, batch {args.batch_size} on {name}"
    return publish(args.out, args.name, title, notes, table, meta, rows)


if __name__ == "__main__":
    main()
