"""Turbo's merge overhead per component (matching, merging, semantic row, bias) on a ViT-B/16-shaped model.

Random weights (`ViTConfig()`, 224 px, 197 tokens), float32, SDPA, eager. For each batch size and r: stock and
Turbo forwards timed in interleaved rounds, then the merge core's pieces timed inside the Turbo forward
(`turbo_hf.evaluation.merge_profile`). "of limit" = measured speed-up / FLOP limit.

    PYTHONPATH=src python scripts/benchmark_merge_overhead.py --batch-sizes 1,16 --r 16 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
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
from turbo_hf.evaluation.merge_profile import COMPONENTS, layer_count_limit, profile_merge_overhead  # noqa: E402
from turbo_hf.evaluation.tables import markdown_table, publish  # noqa: E402
from turbo_hf.evaluation.timing import load_warning  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=comma_type(int), default=[1, 16])
    parser.add_argument("--r", type=comma_type(int), default=[16], help="comma-separated r values")
    parser.add_argument("--mode", default="turbo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="a 2-layer stand-in model (checks the path, cheap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--name", default="merge_overhead_vit_b16")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=64,
                 patch_size=8) if args.small else {}
    config = ViTConfig(**shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    stock = ViTModel(config, add_pooling_layer=False).eval()
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    warning = load_warning(torch.get_num_threads())
    print(f"torch threads: {torch.get_num_threads()}  |  {config.num_hidden_layers} layers, {tokens} tokens  |  "
          f"{args.warmup} warm-up + {args.rounds} rounds, interleaved")
    if warning:
        print(f"WARNING: {warning}")
    rows = []
    for r in args.r:
        turbo = apply_turbo(copy.deepcopy(stock), TurboConfig(r=r, mode=args.mode))
        plan = turbo_plan(turbo, tokens)
        limit = 1 / plan["flops_fraction"]
        for batch in args.batch_sizes:
            pixels = torch.randn(batch, 3, config.image_size, config.image_size,
                                 generator=torch.Generator().manual_seed(args.seed))
            result = profile_merge_overhead(stock, turbo, pixels, rounds=args.rounds, warmup=args.warmup)
            speedup = result["stock_ms"] / result["turbo_ms"]
            count_limit = layer_count_limit(stock.layers[0], plan["token_counts"][:-1], batch, rounds=args.rounds)
            rows.append({
                "batch": batch, "r": r, "mode": args.mode, "flop_limit": round(limit, 4),
                "speedup": round(speedup, 4), "of_limit": round(speedup / limit, 4),
                "layer_count_limit": round(count_limit, 4), "of_count_limit": round(speedup / count_limit, 4),
                "stock_ms": round(result["stock_ms"], 2), "turbo_ms": round(result["turbo_ms"], 2),
                "stock_spread": round(result["stock_spread"], 3), "turbo_spread": round(result["turbo_spread"], 3),
                "overhead_share": round(result["overhead_share"], 4),
                "overhead_ms_per_layer": round(sum(c["ms"] for c in result["components"].values())
                                               / config.num_hidden_layers, 3),
                **{f"{name} share": round(c["share"], 4) for name, c in result["components"].items()},
                **{f"{name} ms": round(c["ms"], 3) for name, c in result["components"].items()},
            })
    headers = ["batch", "r", "stock ms", "turbo ms", "speed-up", "FLOP limit", "of limit", "layer-count limit",
               "of it",
               *[f"{name} %" for name in COMPONENTS], "overhead %", "overhead ms/layer"]
    table = markdown_table(headers, [
        [row["batch"], row["r"], f"{row['stock_ms']:.1f} ({100 * row['stock_spread']:.0f}%)",
         f"{row['turbo_ms']:.1f} ({100 * row['turbo_spread']:.0f}%)", f"{row['speedup']:.2f}x",
         f"{row['flop_limit']:.2f}x", f"{row['of_limit']:.2f}", f"{row['layer_count_limit']:.2f}x",
         f"{row['of_count_limit']:.2f}",
         *[f"{100 * row[f'{name} share']:.1f}" for name in COMPONENTS], f"{100 * row['overhead_share']:.1f}",
         f"{row['overhead_ms_per_layer']:.2f}"]
        for row in rows
    ])
    meta = benchmark_metadata(None, **vars(args))
    meta["runtime_s"] = time.perf_counter() - started
    meta["load_warning"] = warning
    notes = (
        f"ViT-B/16-shaped `ViTModel` (`ViTConfig()`, random weights, no pooler), {tokens} tokens, float32, SDPA, "
        f"eager, {torch.get_num_threads()} torch threads; `TurboConfig(r, mode={args.mode!r})`. Stock and Turbo "
        f"medians over {args.rounds} interleaved rounds (spread = (max - min) / median in brackets); component "
        f"shares: the median time of each merge-core piece inside a Turbo forward over the Turbo median "
        f"(semantic row: `semantic_value`; matching: `key_metric` + `bipartite_plan`; merging: `merge_tokens` + "
        f"`update_source`; bias: `proportional_bias`). of limit = speed-up / FLOP limit. Layer-count limit: the "
        f"speed-up the stock layer itself allows at Turbo's token counts, timed at each layer's input count "
        f"(`merge_profile.layer_count_limit`; the MLP after the merge runs at r fewer, so slightly low): the "
        f"FLOP limit prices a layer linearly in its tokens, which a "
        f"small batch does not follow (weights are read and ops dispatched whatever the count)."
        + (f"\n\n**{warning}.**" if warning else "")
    )
    title = f"# Merge overhead per component: ViT-B/16, {args.mode}"
    return publish(args.out, args.name, title, notes, table, meta, rows)


if __name__ == "__main__":
    main()
