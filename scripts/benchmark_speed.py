"""Speed of Turbo / ToMe on the real DINOv2-S/14 against the stock model, next to the theoretical limit.

For every (mode, r) the theoretical speed limit is 1 / `turbo_plan(model, N)["flops_fraction"]` with
N = (image_size / patch)^2 + 1 tokens. Timing: `torch.inference_mode`, one fixed random batch, and in each
repeat round the stock model and every configuration run once each, round-robin (Turbo applied and removed
between them), so that drift of a shared machine hits all of them alike; the starting point of the round
rotates from round to round. The median over rounds is reported with its interquartile range, the torch thread
count (one by default: `turbo_hf.evaluation.timing.DEFAULT_THREADS`) and the warnings of
`turbo_hf.evaluation.timing.timing_warnings` (noisy rounds, a busy machine, a speed-up above its FLOP limit).

    PYTHONPATH=src python scripts/benchmark_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.backbone import benchmark_metadata, load_backbone, num_tokens, plan_for  # noqa: E402
from turbo_hf.evaluation.measurement import measure_settings  # noqa: E402
from turbo_hf.evaluation.settings import build_settings  # noqa: E402
from turbo_hf.evaluation.tables import Stopwatch, markdown_table, publish  # noqa: E402
from turbo_hf.evaluation.timing import DEFAULT_THREADS, timing_warnings  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model folder or id (default: the real DINOv2-S/14 "
                        "from turbo_hf.testing.real_weights.fetch_real_weights())")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--r", type=comma_type(int), default=[4, 8, 12, 16, 20, 24], help="comma-separated r values")
    parser.add_argument("--modes", type=comma_type(str), default=["tome", "turbo"], help="comma-separated modes")
    parser.add_argument("--alpha", type=float, default=None, help="alpha of the turbo mode (default: library default)")
    parser.add_argument("--alpha-scale", default=None, help="alpha_scale of the turbo mode (default: library default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed round-robin rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed round-robin rounds first")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch threads while timing (one: ratios that hold on a busy machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input batch")
    parser.add_argument("--out", default="benchmarks", help="output folder")
    parser.add_argument("--name", default="speed_dinov2", help="output file stem")
    return parser.parse_args(argv)


def build_configs(args) -> list:
    """The stock model, then every mode at every r (`--alpha` / `--alpha-scale` apply to the turbo mode)."""
    extra = {k: v for k, v in (("alpha", args.alpha), ("alpha_scale", args.alpha_scale)) if v is not None}
    settings = build_settings([m for m in args.modes if m != "turbo"], args.r)
    if "turbo" in args.modes:
        settings += build_settings(["turbo"], args.r, extra)[1:]
    return settings


def main(argv=None) -> dict:
    args = parse_args(argv)
    watch = Stopwatch()
    model, folder = load_backbone(args.model, args.attn)
    tokens = num_tokens(model, args.image_size)
    configs = build_configs(args)
    plans = {s.name: plan_for(model, s.config, tokens) for s in configs if s.config is not None}

    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    meta = benchmark_metadata(folder, **vars(args), num_tokens=tokens)
    print(f"torch threads: {args.threads}  |  {tokens} tokens at {args.image_size} px  |  "
          f"{len(configs)} configurations x ({args.warmup} warmup + {args.repeats} timed) rounds")

    speed = measure_settings(model, configs, lambda: model(pixel_values=pixels), args.batch_size, next(model.parameters()).device,
                             args.warmup, args.repeats, flops=False, memory=False, threads=args.threads, warn=False)
    rows = []
    for setting in configs:
        timing, config = speed[setting.name], setting.config
        plan = plans.get(setting.name, {"token_counts": [tokens], "flops_fraction": 1.0})
        limit = 1 / plan["flops_fraction"]
        rows.append(
            {
                "name": setting.name,
                "mode": setting.mode,
                "r": setting.r,
                "final_tokens": plan["token_counts"][-1],
                "flops_fraction": round(plan["flops_fraction"], 5),
                "theoretical_speedup": round(limit, 4),
                "measured_speedup": round(timing["speedup"], 4),
                "efficiency": round(timing["speedup"] / limit, 4),
                "throughput_img_s": round(timing["throughput"], 3),
                "median_latency_ms": round(timing["median_ms"], 2),
                "min_latency_ms": round(timing["min_ms"], 2),
                "max_latency_ms": round(timing["max_ms"], 2),
                "q1_latency_ms": round(timing["q1_ms"], 2),
                "q3_latency_ms": round(timing["q3_ms"], 2),
                "latencies_ms": [round(t, 2) for t in timing["latencies_ms"]],
                "alpha": config.alpha if config is not None and config.mode == "turbo" else None,
                "alpha_scale": config.alpha_scale if config is not None and config.mode == "turbo" else None,
            }
        )

    headers = ["mode", "r", "final tokens", "speed limit", "measured speed-up", "efficiency", "img/s",
               "median ms/batch", "interquartile ms"]
    table = markdown_table(
        headers,
        [
            [row["mode"], row["r"], row["final_tokens"], f"{row['theoretical_speedup']:.2f}x",
             f"{row['measured_speedup']:.2f}x", f"{row['efficiency']:.0%}", f"{row['throughput_img_s']:.2f}",
             f"{row['median_latency_ms']:.0f}", f"{row['q1_latency_ms']:.0f}-{row['q3_latency_ms']:.0f}"]
            for row in rows
        ],
    )
    machine = speed["stock"]["machine"]
    warnings = timing_warnings({s.name: {"iqr_spread": speed[s.name]["iqr_spread"]} for s in configs}, machine,
                               {row["name"]: (row["measured_speedup"], row["theoretical_speedup"]) for row in rows})
    for warning in warnings:
        print(f"Warning: {warning}")
    meta.update(runtime_s=watch.total(), timing_machine=machine, warnings=warnings)
    turbo_cfg = next((s.config for s in configs if s.mode == "turbo"), None)
    notes = (
        f"DINOv2 {args.image_size} px ({tokens} tokens), batch {args.batch_size}, attention `{args.attn}`, "
        f"{args.repeats} timed round-robin rounds after {args.warmup} warm-up round(s) with {machine['threads']} torch "
        f"thread(s) on {machine['cpus']} CPUs; median per batch and its interquartile range. "
        "Speed limit = 1 / turbo_plan(...)['flops_fraction'] (the FLOPs of the linear layers and of the "
        "N^2 attention products); efficiency = measured speed-up / speed limit."
        + (f" Turbo rows use alpha={turbo_cfg.alpha}, alpha_scale={turbo_cfg.alpha_scale!r}." if turbo_cfg else "")
        + "".join(f"\n\n**Warning**: {warning}" for warning in warnings)
    )
    title = f"# Speed: Turbo token merging on DINOv2-S/14 ({args.image_size} px)"
    return publish(args.out, args.name, title, notes, table, meta, rows)


if __name__ == "__main__":
    main()
