"""Speed of Turbo / ToMe on the real DINOv2-S/14 against the stock model, next to the theoretical limit.

For every (mode, r) the theoretical speed limit is 1 / `turbo_plan(model, N)["flops_fraction"]` with
N = (image_size / patch)^2 + 1 tokens. Timing: `torch.inference_mode`, one fixed random batch, and in each
repeat round the stock model and every configuration run once each, round-robin (Turbo applied and removed
between them), so that drift of a shared machine hits all of them alike; the starting point of the round
rotates from round to round. The median over rounds is reported.

    PYTHONPATH=src python scripts/benchmark_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm.auto import tqdm

from bench_common import (
    Stopwatch,
    load_model,
    markdown_table,
    metadata,
    num_tokens,
    plan_for,
    publish,
)
from turbo_hf import TurboConfig, apply_turbo, is_turbo_applied, remove_turbo


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model folder or id (default: the real DINOv2-S/14 "
                        "from turbo_hf.fetch_real_weights())")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--r", type=_ints, default=_ints("4,8,12,16,20,24"), help="comma-separated r values")
    parser.add_argument("--modes", type=_words, default=["tome", "turbo"], help="comma-separated modes")
    parser.add_argument("--alpha", type=float, default=None, help="alpha of the turbo mode (default: library default)")
    parser.add_argument("--alpha-scale", default=None, help="alpha_scale of the turbo mode (default: library default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed round-robin rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed round-robin rounds first")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input batch")
    parser.add_argument("--out", default="benchmarks", help="output folder")
    parser.add_argument("--name", default="speed_dinov2", help="output file stem")
    return parser.parse_args(argv)


def build_configs(args) -> list[tuple[str, TurboConfig | None]]:
    configs: list[tuple[str, TurboConfig | None]] = [("stock", None)]
    extra = {}
    if args.alpha is not None:
        extra["alpha"] = args.alpha
    if args.alpha_scale is not None:
        extra["alpha_scale"] = args.alpha_scale
    for mode in args.modes:
        for r in args.r:
            kwargs = dict(r=r, mode=mode, **(extra if mode == "turbo" else {}))
            configs.append((f"{mode} r={r}", TurboConfig(**kwargs)))
    return configs


@torch.inference_mode()
def time_round_robin(model, configs, pixels, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per batch of every configuration, `repeats` rounds, each round visiting all configurations."""
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    total = (warmup + repeats) * len(configs)
    with tqdm(total=total, desc="timing", unit="batch") as bar:
        for round_idx in range(warmup + repeats):
            shift = round_idx % len(configs)
            for name, config in configs[shift:] + configs[:shift]:
                if config is None:
                    if is_turbo_applied(model):
                        remove_turbo(model)
                else:
                    apply_turbo(model, config)
                start = time.perf_counter()
                model(pixel_values=pixels)
                elapsed = time.perf_counter() - start
                if round_idx >= warmup:
                    times[name].append(elapsed)
                bar.set_postfix_str(f"{name}: {elapsed * 1000:.0f} ms")
                bar.update()
    if is_turbo_applied(model):
        remove_turbo(model)
    return times


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    watch = Stopwatch()
    model, folder = load_model(args.model, args.attn)
    tokens = num_tokens(model, args.image_size)
    configs = build_configs(args)
    plans = {name: plan_for(model, config, tokens) for name, config in configs if config is not None}

    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    settings = {k: v for k, v in vars(args).items()}
    settings["num_tokens"] = tokens
    meta = metadata(folder, **settings)
    print(f"torch threads: {torch.get_num_threads()}  |  {tokens} tokens at {args.image_size} px  |  "
          f"{len(configs)} configurations x ({args.warmup} warmup + {args.repeats} timed) rounds")

    times = time_round_robin(model, configs, pixels, args.repeats, args.warmup)
    stock = statistics.median(times["stock"])
    rows = []
    for name, config in configs:
        median = statistics.median(times[name])
        if config is None:
            mode, r, final, limit, fraction = "stock", 0, tokens, 1.0, 1.0
        else:
            plan = plans[name]
            mode, r, final = config.mode, config.r, plan["token_counts"][-1]
            fraction = plan["flops_fraction"]
            limit = 1 / fraction
        speedup = stock / median
        rows.append(
            {
                "name": name,
                "mode": mode,
                "r": r,
                "final_tokens": final,
                "flops_fraction": round(fraction, 5),
                "theoretical_speedup": round(limit, 4),
                "measured_speedup": round(speedup, 4),
                "efficiency": round(speedup / limit, 4),
                "throughput_img_s": round(args.batch_size / median, 3),
                "median_latency_ms": round(median * 1000, 2),
                "min_latency_ms": round(min(times[name]) * 1000, 2),
                "max_latency_ms": round(max(times[name]) * 1000, 2),
                "latencies_ms": [round(t * 1000, 2) for t in times[name]],
                "alpha": None if config is None or mode != "turbo" else config.alpha,
                "alpha_scale": None if config is None or mode != "turbo" else config.alpha_scale,
            }
        )

    headers = ["mode", "r", "final tokens", "speed limit", "measured speed-up", "efficiency", "img/s",
               "median ms/batch", "min-max ms"]
    table = markdown_table(
        headers,
        [
            [row["mode"], row["r"], row["final_tokens"], f"{row['theoretical_speedup']:.2f}x",
             f"{row['measured_speedup']:.2f}x", f"{row['efficiency']:.0%}", f"{row['throughput_img_s']:.2f}",
             f"{row['median_latency_ms']:.0f}", f"{row['min_latency_ms']:.0f}-{row['max_latency_ms']:.0f}"]
            for row in rows
        ],
    )
    meta["runtime_s"] = watch.total()
    turbo_cfg = next((c for _, c in configs if c is not None and c.mode == "turbo"), None)
    notes = (
        f"DINOv2 {args.image_size} px ({tokens} tokens), batch {args.batch_size}, attention `{args.attn}`, "
        f"{args.repeats} timed round-robin rounds after {args.warmup} warm-up round(s); median per batch. "
        "Speed limit = 1 / turbo_plan(...)['flops_fraction'] (the FLOPs of the linear layers and of the "
        "N^2 attention products); efficiency = measured speed-up / speed limit."
        + (f" Turbo rows use alpha={turbo_cfg.alpha}, alpha_scale={turbo_cfg.alpha_scale!r}." if turbo_cfg else "")
    )
    title = f"# Speed: Turbo token merging on DINOv2-S/14 ({args.image_size} px)"
    return publish(args.out, args.name, title, notes, table, meta, rows)

if __name__ == "__main__":
    main()
