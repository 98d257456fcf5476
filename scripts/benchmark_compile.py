"""torch.compile: compiled stock model against compiled Turbo, on a ViT-B/16-shaped model with random weights.

`ViTConfig()` defaults (ViT-B/16: 12 layers, width 768, 224 px, 197 tokens), random weights, SDPA attention,
float32, one fixed random batch. One model instance per setting, each compiled once with `torch.compile`
(inductor by default, `fullgraph=True`: with a fixed `r` every shape is static, so Turbo compiles into one graph
like the stock model, and a graph break fails the run). Compilation happens in an untimed first call (its time
is reported); then every setting runs once per round, round-robin with a rotating start
(`turbo_hf.evaluation.timing.interleaved_times`), and the median, min and max over rounds are reported. Eager
rows (`--eager`) give the same settings without compile.

    PYTHONPATH=src python scripts/benchmark_compile.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTModel

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from turbo_hf import TurboConfig, apply_turbo, turbo_plan  # noqa: E402
from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.backbone import benchmark_metadata  # noqa: E402
from turbo_hf.evaluation.tables import markdown_table, publish  # noqa: E402
from turbo_hf.evaluation.timing import interleaved_times  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--r", type=comma_type(int), default=[8, 16], help="comma-separated r values")
    parser.add_argument("--mode", default="turbo", help="Turbo mode of the Turbo rows")
    parser.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after compilation")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--eager", action="store_true", help="also time every setting without compile")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks", help="output folder")
    parser.add_argument("--name", default="compile_vit", help="output file stem")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    config = ViTConfig()
    config._attn_implementation = "sdpa"
    stock = ViTModel(config, add_pooling_layer=False).eval()
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch_size, 3, config.image_size, config.image_size, generator=generator)

    settings: list[tuple[str, int, torch.nn.Module]] = [("stock", 0, stock)]
    plans = {}
    for r in args.r:
        model = apply_turbo(copy.deepcopy(stock), TurboConfig(r=r, mode=args.mode))
        plans[r] = turbo_plan(model, tokens)
        settings.append((f"{args.mode} r={r}", r, model))

    print(f"torch threads: {torch.get_num_threads()}  |  ViT-B/16 {config.image_size} px ({tokens} tokens), "
          f"batch {args.batch_size}  |  backend {args.backend}  |  {args.warmup} warm-up + {args.rounds} rounds")
    runs, compile_s, max_diff = {}, {}, {}
    with torch.inference_mode():
        for name, r, model in settings:
            eager_out = model(pixel_values=pixels).last_hidden_state
            compiled = torch.compile(model, backend=args.backend, fullgraph=True)  # one graph, no break
            start = time.perf_counter()
            compiled_out = compiled(pixel_values=pixels).last_hidden_state
            compile_s[name] = time.perf_counter() - start
            max_diff[name] = float((compiled_out - eager_out).abs().max())
            print(f"  compiled {name} in {compile_s[name]:.1f} s (max |compiled - eager| = {max_diff[name]:.2e})")
            if args.eager:
                runs[f"eager {name}"] = lambda model=model: model(pixel_values=pixels)
            runs[f"compiled {name}"] = lambda compiled=compiled: compiled(pixel_values=pixels)
        times = interleaved_times(runs, repeats=args.rounds, warmup=args.warmup, rotate=True)

    reference = statistics.median(times["compiled stock"])
    rows = []
    for label, samples in times.items():
        kind, name = label.split(" ", 1)
        r = next(r for n, r, _ in settings if n == name)
        fraction = plans[r]["flops_fraction"] if r else 1.0
        median = statistics.median(samples)
        rows.append({
            "setting": label,
            "compiled": kind == "compiled",
            "r": r,
            "final_tokens": plans[r]["token_counts"][-1] if r else tokens,
            "flops_fraction": round(fraction, 5),
            "speed_limit": round(1 / fraction, 4),
            "speedup_vs_compiled_stock": round(reference / median, 4),
            "median_ms": round(1000 * median, 2),
            "min_ms": round(1000 * min(samples), 2),
            "max_ms": round(1000 * max(samples), 2),
            "spread_pct": round(100 * (max(samples) - min(samples)) / median, 1),
            "latencies_ms": [round(1000 * t, 2) for t in samples],
            "images_per_s": round(args.batch_size / median, 3),
            "compile_s": round(compile_s[name], 2) if kind == "compiled" else None,
            "max_abs_diff_compiled_vs_eager": max_diff[name] if kind == "compiled" else None,
        })
    if args.eager:
        eager_stock = statistics.median(times["eager stock"])
        for row in rows:
            row["speedup_vs_eager_stock"] = round(eager_stock / (row["median_ms"] / 1000), 4)

    headers = ["setting", "r", "tokens out", "FLOP limit", "speed-up vs compiled stock", "median ms/batch",
               "min-max ms", "spread", "img/s", "compile s"]
    table = markdown_table(headers, [
        [row["setting"], row["r"], row["final_tokens"], f"{row['speed_limit']:.2f}x",
         f"{row['speedup_vs_compiled_stock']:.2f}x", f"{row['median_ms']:.0f}",
         f"{row['min_ms']:.0f}-{row['max_ms']:.0f}", f"{row['spread_pct']:.0f}%", f"{row['images_per_s']:.2f}",
         "" if row["compile_s"] is None else f"{row['compile_s']:.0f}"]
        for row in rows
    ])
    meta = benchmark_metadata(None, **vars(args))
    meta["runtime_s"] = time.perf_counter() - started
    notes = (
        f"ViT-B/16-shaped `ViTModel` (`ViTConfig()` defaults, random weights, no pooler), {config.image_size} px "
        f"({tokens} tokens), batch {args.batch_size}, float32, SDPA, `torch.compile(backend={args.backend!r})` "
        f"per model instance; {args.rounds} timed round-robin rounds (rotating start) after compilation and "
        f"{args.warmup} warm-up round(s); median per batch, min-max and spread = (max - min) / median over the "
        f"rounds. Turbo rows: `TurboConfig(r, mode={args.mode!r})`. FLOP limit = 1 / turbo_plan flops_fraction. "
        f"torch threads: {torch.get_num_threads()}."
    )
    title = f"# torch.compile: stock against Turbo on ViT-B/16 ({config.image_size} px, batch {args.batch_size})"
    return publish(args.out, args.name, title, notes, table, meta, rows)

if __name__ == "__main__":
    main()
