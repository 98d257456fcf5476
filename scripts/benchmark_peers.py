"""turbo-hf against pruna's `token_merging` on one ViT-B/16-shaped model (random weights, identical for all).

turbo-hf `mode="tome"` (ToMe's algorithm and token order: the original ToMe, tokens out matched) and
`mode="turbo"` run here; pruna runs in the peers' own environment (it needs Transformers 4.x), driven over a
pipe in the same interleaved rounds (`turbo_hf.evaluation.peer_benchmark`). The original ToMe (`tome.patch.timm`)
is not on PyPI and no maintained package provides it for timm, so there is no timm row.

The peers are not turbo-hf dependencies. Their environment:

    python3 -m venv /work/venv-peers
    /work/venv-peers/bin/pip install torch==2.13.0 torchvision==0.28.0 'transformers<5' pruna==0.3.4 \
        'huggingface-hub<1' 'kernels<0.15' diffusers datasets

(PyPI's torch 2.13.0 wheel there is the CUDA build: PyPI's torchvision 0.28 links against it, and pruna needs
torchvision; Transformers 4.x needs huggingface-hub < 1, which older kernels / diffusers / datasets accept.)

Run (ViT-B/16, 224 px; latency at batch 1, throughput at --batch-size):

    PYTHONPATH=src python scripts/benchmark_peers.py --r 8,13,16 --batch-size 8 --rounds 3 --rounds-single 5
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
from turbo_hf.evaluation.peer_benchmark import run_peer_benchmark  # noqa: E402
from turbo_hf.evaluation.tables import markdown_table, publish  # noqa: E402
from turbo_hf.evaluation.timing import load_warning  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", type=comma_type(int), default=[8, 13, 16], help="comma-separated r values")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the throughput rows")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds at --batch-size")
    parser.add_argument("--rounds-single", type=int, default=5, help="timed rounds at batch 1")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before each")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both environments")
    parser.add_argument("--peer-python", default="/work/venv-peers/bin/python", help="the peers' Python")
    parser.add_argument("--no-peers", action="store_true", help="turbo-hf rows only")
    parser.add_argument("--small", action="store_true", help="a 2-layer stand-in model (checks the path, cheap)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks", help="output folder")
    parser.add_argument("--name", default="peers_vit_b16", help="output file stem")
    return parser.parse_args(argv)


def _cell(value, digits: int = 2, suffix: str = "") -> str:
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    threads = args.threads or torch.get_num_threads()
    warning = load_warning(threads)
    print(f"torch threads: {threads} (both environments)  |  batch 1 and batch {args.batch_size}  |  "
          f"{args.warmup} warm-up + {args.rounds_single} / {args.rounds} rounds, interleaved, rotating start")
    if warning:
        print(f"WARNING: {warning}")
    result = run_peer_benchmark(
        args.r, batch_size=args.batch_size, rounds=args.rounds, rounds_single=args.rounds_single,
        warmup=args.warmup, threads=threads, peer_python=args.peer_python, peers=not args.no_peers,
        small=args.small, memory=not args.no_memory, seed=args.seed,
    )
    rows = result["rows"]
    headers = ["setting", "env", "r", "tokens out", "FLOP limit", "b1 ms (spread)", "b1 speed-up (of min)",
               f"b{args.batch_size} img/s (spread)", f"b{args.batch_size} speed-up (of min)", "peak fwd MiB",
               "logits cos", "top-1 agree"]
    table = markdown_table(headers, [
        [row["setting"], row["environment"], row["r"], row["final_tokens"] or "",
         _cell(1 / row["flops_fraction"] if row["flops_fraction"] else None, suffix="x"),
         f"{row['latency_b1_ms']:.0f} ({100 * row['latency_b1_spread']:.0f}%)",
         f"{row['speedup_b1_vs_own_stock']:.2f}x ({row['speedup_b1_of_min_vs_own_stock']:.2f}x)",
         f"{row['images_per_s']:.2f} ({100 * row['batch_spread']:.0f}%)",
         f"{row['speedup_batch_vs_own_stock']:.2f}x ({row['speedup_batch_of_min_vs_own_stock']:.2f}x)",
         _cell(row["peak_forward_rss_mib"], 0),
         f"{row['logits_cosine']:.4f}", f"{row['top1_agreement']:.2f}"]
        for row in rows
    ])
    meta = benchmark_metadata(None, **vars(args))
    meta["runtime_s"] = time.perf_counter() - started
    meta["peer_versions"] = result["peer_versions"]
    meta["stock_peer_env_vs_this"] = result["stock_peer_env_vs_this"]
    meta["load_warning"] = warning
    versions = result["peer_versions"] or {}
    same = [row["max_abs_logit_diff_vs_turbo_hf_tome"] for row in rows if row["max_abs_logit_diff_vs_turbo_hf_tome"]]
    notes = (
        f"ViT-B/16-shaped `ViTForImageClassification` (`ViTConfig()`, 1000 labels, random weights, seed "
        f"{args.seed}; one saved folder that every setting loads), {result['tokens']} tokens, float32, SDPA, "
        f"{threads} torch threads in both environments. env `this`: turbo-hf with torch {torch.__version__}; env "
        f"`peers`: pruna {versions.get('pruna')} with transformers {versions.get('transformers')}, torch "
        f"{versions.get('torch')} (pruna's `token_merging` patches Transformers 4.x ViT classes, turbo-hf needs "
        f"5.x: two processes, the peer one driven over a pipe inside the same interleaved rounds). Speed-ups, "
        f"logits cosine and top-1 agreement are against the stock model of the row's own environment, from the "
        f"same run (in brackets: the same ratio of the fastest rounds, a check on a shared machine). b1: median "
        f"latency at batch 1 over {args.rounds_single} rounds; b{args.batch_size}: images/s "
        f"from the median over {args.rounds} rounds; spread = (max - min) / median. Peak fwd MiB: resident memory "
        f"one batch-{args.batch_size} forward adds over the loaded model (after a batch-1 forward that pages in "
        f"the weights), in a fresh process per setting. turbo-hf "
        f"`tome` uses ToMe's token order (`token_order='tome'`). FLOP limit = 1 / turbo_plan flops_fraction."
        + (f" pruna's logits against turbo-hf `tome` at the same r: max |difference| {max(same):.1e}." if same else "")
        + (f"\n\n**{warning}.**" if warning else "")
    )
    title = f"# Against the peers: ViT-B/16, 224 px, batch 1 and {args.batch_size}"
    return publish(args.out, args.name, title, notes, table, meta, rows)


if __name__ == "__main__":
    main()
