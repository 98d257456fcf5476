"""Speed, memory and KV cache of image-token reduction inside Qwen2-VL's language model against the stock model.

Random weights at Qwen2-VL-7B's depth and sequence lengths, scaled down in width
(`turbo_hf.evaluation.qwen_llm_benchmark`), two image resolutions, keep shares 0.5 and 0.25 after decoder layer 2;
`--checkpoint PATH` measures a real Qwen2-VL checkpoint instead (speed only: no quality without real data).

Run:

    PYTHONPATH=src python scripts/benchmark_vlm_llm.py            # writes benchmarks/qwen2_vl_llm.{json,md}
    PYTHONPATH=src python scripts/benchmark_vlm_llm.py --quick    # smoke run: 4 layers, 1 round
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from turbo_hf.evaluation.arguments import add_llm_benchmark_arguments, comma_type
from turbo_hf.evaluation.llm_reduction_benchmark import script_metadata
from turbo_hf.evaluation.qwen_llm_benchmark import (
    build_qwen2_vl, cost_markdown, cost_split, results_markdown, run_qwen2_vl, tower_markdown, tower_section,
    tower_split, tower_versus_llm,
)
from turbo_hf.evaluation.tables import metadata_markdown, save

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a local Qwen2-VL checkpoint folder (default: random)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 layers, batch 1, 1 round, 4 tokens")
    parser.add_argument("--resolutions", type=comma_type(int), default=[448, 672])
    parser.add_argument("--batches", type=comma_type(int), default=[1, 2])
    add_llm_benchmark_arguments(parser, out=str(REPO_ROOT / "benchmarks"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    layers, repeats, batches, new_tokens = 28, args.repeats, args.batches, args.new_tokens
    if args.quick:
        layers, repeats, batches, new_tokens = 4, 1, [1], 4
    settings = [("stock", None)]
    for keep in args.keep:
        settings.append((f"K={args.layer} keep {keep:g} (merge)", dict(llm_layers=[args.layer], llm_keep=[keep])))
    settings.append((f"K={args.layer} keep {min(args.keep):g} (prune)",
                     dict(llm_layers=[args.layer], llm_keep=[min(args.keep)], reduction="prune")))
    model = build_qwen2_vl(layers, args.attn, args.checkpoint)
    results = run_qwen2_vl(model, settings, args.resolutions, batches, repeats, args.warmup, new_tokens)
    towers = tower_split(model, args.resolutions, batches, repeats, args.warmup, args.layer, args.keep, args.threads)
    versus = tower_versus_llm(towers, results)
    meta = script_metadata(args, model, repeats, new_tokens, start, "random Qwen2-VL-shaped weights")
    notes = (
        "*prefill*: one forward over the prompt and image (`use_cache=True`, `logits_to_keep=1`); *decode*: "
        f"{new_tokens} greedy steps on that prefill's KV cache, per token. Medians of {repeats} interleaved rounds "
        "(wall clock; *CPU*: the same ratio from process CPU time), *spread*: (max - min) / median of the prefill and "
        "decode samples. Ratios are stock / setting (> 1: faster) except *peak mem* and *KV cache* (setting / "
        "stock). *limit*: stock token-layers / setting token-layers of the prefill (the language model's work if "
        "it were linear in tokens; the vision tower is not reduced). "
        + ("Random weights: no quality numbers." if args.checkpoint is None else "No quality numbers.")
    )
    if meta["load_warning"]:
        notes += f"\n\n**Warning**: {meta['load_warning']}"
    costs = cost_split(args.resolutions, args.layer, args.keep, None if args.checkpoint is None else model.config)
    cost_notes = (
        f"## Where an image's MACs are ({args.checkpoint or 'Qwen2-VL-7B'} shapes)\n\n"
        "From the real module shapes (`cost_split`: one vision block and one decoder layer on the meta device): the "
        "vision tower against the language model's layers over the image tokens, and what the reduction before "
        f"layer {args.layer} saves (text tokens not counted). This decides where Turbo reduces Qwen-VL: keeping a "
        "quarter, the in-LLM reduction saves more MACs than the whole vision tower costs, keeping half about as "
        "much; merging inside the tower could save only part of the tower's MACs (it has to keep the 2x2 merger's "
        "groups and 2.5's windows whole), so it is not built."
    )
    tower_notes = tower_section(towers, versus, model.config, repeats, args.layer, args.checkpoint)
    markdown = "\n\n".join(["# Image tokens reduced inside Qwen2-VL's language model: speed and memory", notes,
                            results_markdown(results), cost_notes, cost_markdown(costs), tower_notes,
                            tower_markdown(towers, versus), "## Run", metadata_markdown(meta)])
    stem = "qwen2_vl_llm_quick" if args.quick else "qwen2_vl_llm"
    payload = {"metadata": meta, "results": results, "costs": costs, "tower_split": towers, "tower_versus_llm": versus}
    save(args.out, stem, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
