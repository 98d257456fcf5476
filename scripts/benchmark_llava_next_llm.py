"""Speed, memory and KV cache of image-token reduction inside LLaVA-NeXT's language model against the stock model.

Random weights at LLaVA-NeXT's depth, scaled down in width and crop size
(`turbo_hf.evaluation.llava_next_llm_benchmark`), two anyres images alone and together in one batch, keep shares
0.5 and 0.25 of each image's tokens after decoder layer 2; `--checkpoint PATH` measures a real LLaVA-NeXT
checkpoint instead (speed only: no quality without real data; images one and two of its crops wide).

Run:

    PYTHONPATH=src python scripts/benchmark_llava_next_llm.py          # writes benchmarks/llava_next_llm.{json,md}
    PYTHONPATH=src python scripts/benchmark_llava_next_llm.py --quick  # smoke run: 4 layers, 1 round
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from turbo_hf.evaluation.arguments import add_llm_benchmark_arguments
from turbo_hf.evaluation.llava_next_llm_benchmark import build_llava_next, image_sizes, run_llava_next
from turbo_hf.evaluation.llm_reduction_benchmark import script_metadata
from turbo_hf.evaluation.qwen_llm_benchmark import results_markdown
from turbo_hf.evaluation.tables import metadata_markdown, save

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a local LLaVA-NeXT checkpoint folder (default: random)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 layers, 1 round, 4 tokens")
    add_llm_benchmark_arguments(parser, out=str(REPO_ROOT / "benchmarks"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    layers, repeats, new_tokens = (4, 1, 4) if args.quick else (32, args.repeats, args.new_tokens)
    settings = [("stock", None)] + [(f"K={args.layer} keep {keep:g}", dict(llm_layers=[args.layer], llm_keep=[keep]))
                                    for keep in args.keep]
    model = build_llava_next(layers, args.attn, args.checkpoint)
    sizes = image_sizes(model.config)
    size_sets = [[sizes[0]], [sizes[1]], sizes]
    results = run_llava_next(model, settings, size_sets, repeats, args.warmup, new_tokens)
    meta = script_metadata(args, model, repeats, new_tokens, start, "random LLaVA-NeXT-shaped weights")
    notes = (
        "Each block: the image sizes of one batch (one image per prompt, left-padded), *image tokens / image*: each "
        "image's packed token count (base crop, unpadded tiles, `image_newline` tokens), which the keep share "
        f"applies to. *prefill*: one forward (`use_cache=True`, `logits_to_keep=1`); *decode*: {new_tokens} greedy "
        f"steps on its cache, per token; medians of {repeats} interleaved rounds (wall clock; *CPU*: process CPU "
        "time), *spread*: (max - min) / median. Ratios: stock / setting (> 1: faster), *peak mem* and *KV cache*: "
        "setting / stock; *limit*: stock / setting token-layers of the prefill. The vision tower is not reduced "
        "(`r=0`). " + ("Random weights: no quality numbers." if args.checkpoint is None else "No quality numbers.")
    )
    if meta["load_warning"]:
        notes += f"\n\n**Warning**: {meta['load_warning']}"
    markdown = "\n\n".join(["# Image tokens reduced inside LLaVA-NeXT's language model: speed and memory", notes,
                            results_markdown(results), "## Run", metadata_markdown(meta)])
    stem = "llava_next_llm_quick" if args.quick else "llava_next_llm"
    payload = {"metadata": meta, "results": results}
    save(args.out, stem, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
