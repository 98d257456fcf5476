"""Speed and memory of image-token reduction inside LLaVA's language model, on a LLaVA-shaped random model.

The model has LLaVA-1.5's sequence lengths and depth, scaled down in width so the run fits a small CPU:

- vision: CLIP tower at 336 px, patch 14 (576 patches + [CLS]; `vision_feature_layer=-2`, `"default"` strategy:
  576 image tokens reach the language model), 4 layers of width 64;
- language model: Llama with 32 layers (like a 7B), hidden 256, 8 heads, intermediate 688, vocabulary 1000;
- prompt: ~40 text tokens around the image (`USER: <image> ... ASSISTANT:`); batch 1 (40 text tokens) and batch 4
  (36 to 44 text tokens, left-padded).

Settings (`llava_settings`, shares of the image tokens): a quarter kept before decoder layer 2 (`--layer`), merged
and pruned; half then an eighth before layers 2 and 16; the vision tower merging half (`r=96`), alone and with an
eighth kept before layer 2. `--checkpoint PATH` measures a local `LlavaForConditionalGeneration` checkpoint
instead (its image size, token ids and depth; speed only: no quality without real data).

Measured against the stock model (`LlavaForConditionalGeneration`, no Turbo), in the same process:

- prefill: one forward over the prompt with the images (`use_cache=True`, `logits_to_keep=1`, as `generate()`
  runs it);
- decode: 32 greedy decoding steps on the KV cache of that prefill (each step one token per sample, as
  `generate()` runs them); reported per token. The cache is cut back (`cache.crop(-32)`) after each timed run;
- both timed with `turbo_hf.evaluation.timing.interleaved_times` (every setting and the stock model in rotating
  round-robin rounds; medians with their spread), wall clock and, separately, process CPU time (with one torch
  thread the CPU time is the compute itself, not time spent waiting for a core on a shared machine);
- memory: the peak of tensor memory allocated during one prefill + 32 decoding steps, from the torch profiler
  (`profile_memory=True`: allocations minus frees in time order, relative to the start; weights excluded),
  and the size of the KV cache after the prefill.

Run:

    PYTHONPATH=src python scripts/benchmark_llava_llm.py            # writes benchmarks/llava_llm.{json,md}
    PYTHONPATH=src python scripts/benchmark_llava_llm.py --quick    # smoke run: 4 layers, batch 1, 1 round
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from turbo_hf.evaluation.arguments import comma_type
from turbo_hf.evaluation.llava_llm_benchmark import build_llava, llava_settings, run_batch
from turbo_hf.evaluation.llava_llm_report import llm_markdown
from turbo_hf.evaluation.report import run_metadata
from turbo_hf.evaluation.tables import save

RANDOM_MODEL = "LLaVA-shaped, random weights (turbo_hf.evaluation.llava_llm_benchmark.llava_shaped_model)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a local LLaVA checkpoint folder (default: random)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 layers, batch 1, 1 round, 4 new tokens")
    parser.add_argument("--layer", type=int, default=2, help="the decoder layer before which images are reduced")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: CPU time is the compute itself)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--batches", type=comma_type(int), default=[1, 4], help="batch sizes, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy decoding steps timed after the prefill")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "benchmarks"), help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    layers, repeats, batches, new_tokens = 32, args.repeats, args.batches, args.new_tokens
    if args.quick:
        layers, repeats, batches, new_tokens = 4, 1, [1], 4
    model = build_llava(layers, args.attn, args.checkpoint)
    settings = llava_settings(model.config, args.layer)  # a 4-layer model: no second reduction layer
    results = []
    for batch in batches:
        results.append(run_batch(model, batch, settings, repeats, args.warmup, new_tokens))
        print(f"batch {batch} done after {time.time() - start:.0f} s", flush=True)
    meta = run_metadata(
        model=args.checkpoint or RANDOM_MODEL, checkpoint=args.checkpoint, attn=args.attn,
        text_layers=model.config.text_config.num_hidden_layers, layer=args.layer, repeats=repeats,
        warmup=args.warmup, new_tokens=new_tokens, quick=args.quick,
    )
    result = {"meta": meta, "batches": results, "runtime_s": time.time() - start}
    page = llm_markdown(result)
    save(args.out, "llava_llm_quick" if args.quick else "llava_llm", result, page)
    print(page)
    return result


if __name__ == "__main__":
    main()
