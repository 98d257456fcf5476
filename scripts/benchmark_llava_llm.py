"""Speed and memory of image-token reduction inside LLaVA's language model, on a LLaVA-shaped random model.

The model has LLaVA-1.5's sequence lengths and depth, scaled down in width so the run fits a small CPU:

- vision: CLIP tower at 336 px, patch 14 (576 patches + [CLS]; `vision_feature_layer=-2`, `"default"` strategy:
  576 image tokens reach the language model), 4 layers of width 64;
- language model: Llama with 32 layers (like a 7B), hidden 256, 8 heads, intermediate 688, vocabulary 1000;
- prompt: ~40 text tokens around the image (`USER: <image> ... ASSISTANT:`); batch 1 (40 text tokens) and batch 4
  (36 to 44 text tokens, left-padded).

Measured against the stock model (`LlavaForConditionalGeneration`, no Turbo), in the same process:

- prefill: one forward over the prompt with the images (`use_cache=True`, `logits_to_keep=1`, as `generate()`
  runs it);
- decode: 32 greedy decoding steps on the KV cache of that prefill (each step one token per sample, as
  `generate()` runs them); reported per token. The cache is cut back (`cache.crop(-32)`) after each timed run;
- both timed by `turbo_hf.evaluation.llm_reduction_benchmark.measure_settings` (every setting and the stock model in
  round-robin rounds; medians), wall clock and, separately, process CPU time (with one torch thread the CPU time is the compute
  itself, not time spent waiting for a core on a shared machine);
- memory: the peak of tensor memory allocated during one prefill + 32 decoding steps, from the torch profiler
  (`profile_memory=True`: allocations minus frees in time order, relative to the start; weights excluded),
  and the size of the KV cache after the prefill.

Run:

    PYTHONPATH=src python scripts/benchmark_llava_llm.py            # writes benchmarks/llava_llm.{json,md}
    PYTHONPATH=src python scripts/benchmark_llava_llm.py --quick    # smoke run: 2 layers, 1 round
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "src") not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT / "src"))

import transformers  # noqa: E402
from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

import turbo_hf  # noqa: E402
from turbo_hf import TurboConfig, apply_turbo  # noqa: E402
from turbo_hf.evaluation.llm_reduction_benchmark import measure_settings  # noqa: E402

IMAGE_TOKEN_ID = 999
BOS, USER, ASSISTANT, NEWLINE = 1, 5, 6, 7
NEW_TOKENS = 32

SETTINGS = [
    ("stock", None),
    ("LLM K=2 keep 144 (merge)", dict(llm_layers=[2], llm_keep=[144])),
    ("LLM K=2 keep 144 (prune)", dict(llm_layers=[2], llm_keep=[144], reduction="prune")),
    ("LLM K=2,16 keep 288,72 (merge)", dict(llm_layers=[2, 16], llm_keep=[288, 72])),
    ("vision r=96 (288 tokens)", dict(r=96)),
    ("vision r=96 + LLM K=2 keep 72", dict(r=96, llm_layers=[2], llm_keep=[72])),
]


def build_model(layers: int, attn: str) -> LlavaForConditionalGeneration:
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
        projection_dim=64,
    )
    text = dict(
        model_type="llama",
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=BOS,
        eos_token_id=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, pad_token_id=0)
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def make_inputs(batch: int, image_tokens: int, seed: int = 0) -> dict:
    """Prompts `<s> USER: <image>... words \\n ASSISTANT:` with ~40 text tokens (36..44 in a batch), left-padded."""
    generator = torch.Generator().manual_seed(seed)
    text_counts = [40] if batch == 1 else [36 + (8 * i) // (batch - 1) for i in range(batch)]
    rows = []
    for count in text_counts:
        words = torch.randint(10, 990, (count - 5,), generator=generator).tolist()
        rows.append([BOS, USER] + [IMAGE_TOKEN_ID] * image_tokens + words + [NEWLINE, ASSISTANT, NEWLINE])
    length = max(len(row) for row in rows)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row) :] = torch.tensor(row)
        attention_mask[i, length - len(row) :] = 1
    pixel_values = torch.randn(batch, 3, 336, 336, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}, text_counts


def run_batch(model, weights, batch: int, settings, repeats: int, warmup: int, new_tokens: int) -> dict:
    def build(turbo):
        variant = build_variant(model, weights, turbo)
        # the placeholders: 576 per image, or the merged count when the vision tower merges
        image_tokens = 576 if turbo is None else variant.model.num_image_tokens()
        inputs, _ = make_inputs(batch, image_tokens)  # same words and pixels for every setting
        config = None if turbo is None else TurboConfig(**turbo).settings()
        return variant, inputs, {"turbo_config": config, "image_tokens_to_llm": image_tokens}

    info = measure_settings(settings, build, repeats, warmup, new_tokens)
    return {
        "batch": batch,
        "prompt_length": info["stock"]["prompt_length"],
        "text_tokens": make_inputs(batch, 576)[1],
        "settings": info,
    }


def build_variant(model, weights, turbo):
    """A copy of the stock model (same weights), patched with `turbo` (None: stock)."""
    variant = LlavaForConditionalGeneration(model.config).eval()
    variant.load_state_dict(weights)
    if turbo is not None:
        apply_turbo(variant, **turbo)
    return variant


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# Image tokens reduced inside LLaVA's language model: speed and memory",
        "",
        f"Generated by `scripts/benchmark_llava_llm.py` on {meta['date']} ({meta['cpu']}, {meta['cores']} usable "
        f"cores, torch {meta['torch']} with {meta['threads']} thread(s), transformers {meta['transformers']}, "
        f"attention `{meta['attn']}`; load average at start {meta['load']}; total run {meta['runtime_s']:.0f} s).",
        "",
        "Model: LLaVA-shaped, random weights. CLIP tower 336 px / patch 14 (576 image tokens reach the language "
        "model), 4 layers of width 64; Llama language model with "
        f"{meta['text_layers']} layers, hidden 256, 8 heads, intermediate 688, vocabulary 1000. Prompt: "
        "`<s> USER: <image> words ... ASSISTANT:` with ~40 text tokens.",
        "",
        "*prefill*: one forward over the prompt and images (`use_cache=True`, `logits_to_keep=1`); *decode*: "
        f"{meta['new_tokens']} greedy steps on that prefill's KV cache, per token. Times are medians of "
        f"{meta['repeats']} interleaved rounds (`turbo_hf.evaluation.llm_reduction_benchmark`, after {meta['warmup']} warm-up "
        "round), wall clock; *CPU*: the same ratio from process CPU time. Ratios are stock / setting (> 1: faster). "
        f"*peak mem*: peak tensor memory allocated during one prefill + {meta['new_tokens']} decoding steps, from the "
        "torch profiler "
        "(`profile_memory=True`, allocations minus frees in time order; model weights excluded), as a ratio to the "
        "stock model's; *KV cache*: cache size after the prefill; *limit*: the language model's prefill work if it "
        "were linear in tokens, stock token-layers / setting token-layers (the quadratic attention part and the "
        "vision tower not counted). Turbo: default scoring (`mode='turbo'`, alpha "
        "0.02, `alpha_scale='length'`, last prompt token as the text query); `reduction` merge unless noted.",
        "",
    ]
    for batch in result["batches"]:
        lines += [
            f"## Batch {batch['batch']} (prompt length {batch['prompt_length']}, text tokens {batch['text_tokens']})",
            "",
            "| setting | image tokens: LLM input -> after reductions | cache tokens (layer 0 / last) | limit | "
            "prefill | prefill x (CPU) | decode / token | decode x (CPU) | peak mem | KV cache |",
            "| :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, entry in batch["settings"].items():
            config = entry["turbo_config"] or {}
            keeps = config.get("llm_keep") or []
            tokens = " -> ".join(str(v) for v in [entry["image_tokens_to_llm"], *keeps])
            cache = entry["cache_tokens_per_layer"]
            if name == "stock":
                prefill = f"{entry['prefill_s'] * 1000:.0f} ms"
                decode = f"{entry['decode_per_token_s'] * 1000:.1f} ms"
                prefill_x = decode_x = "1.00x"
                memory = f"{entry['peak_tensor_mb']:.0f} MB"
                kv = f"{entry['kv_cache_mb']:.1f} MB"
            else:
                prefill = f"{entry['prefill_speedup']:.2f}x"
                decode = f"{entry['decode_speedup']:.2f}x"
                prefill_x = f"{entry['prefill_speedup_cpu']:.2f}x"
                decode_x = f"{entry['decode_speedup_cpu']:.2f}x"
                memory = f"{entry['peak_memory_ratio']:.2f} ({entry['peak_tensor_mb']:.0f} MB)"
                kv = f"{entry['kv_cache_ratio']:.2f} ({entry['kv_cache_mb']:.1f} MB)"
            lines.append(
                f"| {name} | {tokens} | {cache[0]} / {cache[-1]} | {entry['token_layer_limit']:.2f}x | {prefill} | "
                f"{prefill_x} | {decode} | {decode_x} | "
                f"{memory} | {kv} |"
            )
        lines.append("")
    lines += [
        "Stock row: absolute values (prefill latency, time per decoded token, peak tensor memory, KV cache); other "
        "rows: ratios to it. The JSON keeps every absolute value.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 layers, batch 1, 1 round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    layers, repeats, batches, settings = 32, args.repeats, args.batches, SETTINGS
    new_tokens = NEW_TOKENS
    if args.quick:
        layers, repeats, batches, new_tokens = 4, 1, [1], 4
        settings = [s for s in SETTINGS if not (s[1] or {}).get("llm_layers") or max(s[1]["llm_layers"]) < 4]
    model = build_model(layers, args.attn)
    weights = model.state_dict()
    results = []
    for batch in batches:
        results.append(run_batch(model, weights, batch, settings, repeats, args.warmup, new_tokens))
        print(f"batch {batch} done after {time.time() - start:.0f} s", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "turbo_hf": getattr(turbo_hf, "__version__", None),
            "attn": args.attn,
            "load": ", ".join(f"{value:.2f}" for value in os.getloadavg()),
            "text_layers": layers,
            "repeats": repeats,
            "warmup": args.warmup,
            "new_tokens": new_tokens,
            "memory_measure": "torch profiler (profile_memory=True): peak of allocations minus frees during one "
            "prefill + decoding, weights excluded",
            "quick": args.quick,
        },
        "batches": results,
    }
    result["meta"]["runtime_s"] = time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "llava_llm_quick" if args.quick else "llava_llm"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
