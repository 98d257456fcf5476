"""Speed and memory of image-token reduction inside a VLM's language model, against the stock model in one run.

For every setting (a Turbo config, or None for the stock model) on the same weights and prompts: the prefill (one
forward over the prompt and its images with `use_cache=True` and `logits_to_keep=1`, as `generate()` runs it), then
`new_tokens` greedy decoding steps on that prefill's KV cache (cut back after each timed run). Both are timed with
the one interleaved timing loop (`timing.interleaved_times`, rotating rounds, wall clock and process CPU time);
memory is the peak of tensor memory allocated during one prefill + decoding (torch profiler, weights excluded),
and the KV cache size after the prefill.

Example (a 2-layer LLaVA-shaped model at 112 px, one round):

```python
>>> from turbo_hf.evaluation.llm_benchmark import llava_shaped_model, run_batch
>>> model = llava_shaped_model(text_layers=2, image_size=112)
>>> result = run_batch(model, 1, [("stock", None), ("K=1 keep 16", {"llm_layers": [1], "llm_keep": [16]})],
...                    repeats=1, warmup=0, new_tokens=2)
>>> result["settings"]["K=1 keep 16"]["cache_tokens_per_layer"][1] < result["settings"]["stock"]["cache_tokens_per_layer"][1]
True
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlavaConfig, LlavaForConditionalGeneration

from ..modeling.compat import cache_kwargs, cache_of
from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo
from .timing import cpu_clocked, interleaved_times, timing_summary

IMAGE_TOKEN_ID = 999
BOS, USER, ASSISTANT, NEWLINE = 1, 5, 6, 7

Setting = tuple[str, dict | None]


def llava_shaped_model(text_layers: int = 32, attn: str = "sdpa", image_size: int = 336) -> LlavaForConditionalGeneration:
    """A LLaVA-1.5-shaped model with random weights (seed 0), scaled down in width: CLIP tower at `image_size` px,
    patch 14, 4 layers of width 64 (at 336 px, 576 image tokens reach the language model); a Llama language model
    with `text_layers` layers, hidden 256, 8 heads, intermediate 688, vocabulary 1000."""
    vision = dict(
        model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=64,
    )
    text = dict(
        model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=text_layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048, pad_token_id=0,
        bos_token_id=BOS, eos_token_id=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, pad_token_id=0)
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def llava_prompts(batch: int, image_tokens: int, image_size: int, seed: int = 0) -> tuple[dict, list[int]]:
    """Prompts `<s> USER: <image>... words \\n ASSISTANT:` with ~40 text tokens (36..44 in a batch), left-padded,
    and random pixels; returns the inputs and the text-token count of each row."""
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
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}, text_counts


class DecodeRunner:
    """Prefill and decode callables for one model on one batch (the prefill's output is kept for the decode)."""

    def __init__(self, model: torch.nn.Module, inputs: dict, new_tokens: int):
        self.model, self.inputs, self.new_tokens = model, inputs, new_tokens
        mask = inputs["attention_mask"]
        self.positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        self.output = None

    @torch.no_grad()
    def prefill(self):
        self.output = self.model(
            **self.inputs, position_ids=self.positions, use_cache=True, logits_to_keep=1, return_dict=True
        )
        return self.output

    @torch.no_grad()
    def decode(self) -> torch.Tensor:
        """`new_tokens` greedy steps on the prefill's cache, then the cache is cut back to the prefill."""
        cache = cache_of(self.output)
        token = self.output.logits[:, -1].argmax(-1, keepdim=True)
        mask, position = self.inputs["attention_mask"], self.positions[:, -1:]
        tokens = []
        for _ in range(self.new_tokens):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            position = position + 1
            out = self.model(
                input_ids=token, attention_mask=mask, position_ids=position, use_cache=True,
                **cache_kwargs(cache), logits_to_keep=1, return_dict=True,
            )
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        cache.crop(-self.new_tokens)
        return torch.cat(tokens, dim=1)


def cache_megabytes(cache) -> float:
    """Size of a KV cache's keys and values (MiB)."""
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers) / 2**20


def peak_tensor_megabytes(call: Callable[[], object]) -> float:
    """Peak of tensor memory allocated during `call` (MiB; torch profiler, allocations minus frees in time order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage) for event in prof.events() if event.self_cpu_memory_usage
    )
    current = peak = 0
    for _, change in changes:
        current += change
        peak = max(peak, current)
    return peak / 2**20


def variant_of(model: LlavaForConditionalGeneration, weights: dict, turbo: dict | None):
    """A copy of the stock `model` with the same weights, patched with `turbo` (None: stock)."""
    variant = type(model)(model.config).eval()
    variant.load_state_dict(weights)
    if turbo is not None:
        apply_turbo(variant, **turbo)
    return variant


def _ratios(entry: dict, stock: dict, new_tokens: int) -> None:
    entry["prefill_speedup"] = stock["prefill_s"] / entry["prefill_s"]
    entry["decode_speedup"] = stock["decode_per_token_s"] / entry["decode_per_token_s"]
    entry["prefill_speedup_cpu"] = stock["prefill_cpu_s"] / entry["prefill_cpu_s"]
    entry["decode_speedup_cpu"] = stock["decode_per_token_cpu_s"] / entry["decode_per_token_cpu_s"]
    entry["peak_memory_ratio"] = entry["peak_tensor_mb"] / stock["peak_tensor_mb"]
    entry["kv_cache_ratio"] = entry["kv_cache_mb"] / stock["kv_cache_mb"]
    # language-model work if it were linear in tokens: token-layers of the stock prefill / of this setting
    entry["token_layer_limit"] = sum(stock["cache_tokens_per_layer"]) / sum(entry["cache_tokens_per_layer"])


def run_batch(
    model: LlavaForConditionalGeneration,
    batch: int,
    settings: Sequence[Setting],
    repeats: int = 3,
    warmup: int = 1,
    new_tokens: int = 32,
) -> dict:
    """Time and measure every setting (the first must be `("stock", None)`) on one batch of `batch` prompts."""
    if not settings or settings[0][1] is not None:
        raise ValueError("`settings` must start with the stock model, `('stock', None)`.")
    weights, image_size = model.state_dict(), model.config.vision_config.image_size
    stock_tokens = (image_size // model.config.vision_config.patch_size) ** 2
    runners, info, cpu = {}, {}, {}
    for name, turbo in settings:
        variant = variant_of(model, weights, turbo)
        # the placeholders: every patch per image, or the merged count when the vision tower merges
        image_tokens = stock_tokens if turbo is None else variant.model.num_image_tokens()
        inputs, text_counts = llava_prompts(batch, image_tokens, image_size)  # same words and pixels everywhere
        runner = runners[name] = DecodeRunner(variant, inputs, new_tokens)
        cache = cache_of(runner.prefill())
        state = getattr(cache, "turbo_llm_state", None)
        info[name] = {
            "turbo_config": None if turbo is None else TurboConfig(**turbo).settings(),
            "image_tokens_to_llm": image_tokens,
            "prompt_length": inputs["input_ids"].shape[1],
            "cache_tokens_per_layer": [layer.keys.shape[2] for layer in cache.layers],
            "kv_cache_mb": cache_megabytes(cache),
            "reduced_layers": None if state is None else state.layers,
        }
        cpu[f"{name}|prefill"], cpu[f"{name}|decode"] = [], []
    calls = {}
    for name, runner in runners.items():
        calls[f"{name}|prefill"] = cpu_clocked(runner.prefill, cpu[f"{name}|prefill"])
        calls[f"{name}|decode"] = cpu_clocked(runner.decode, cpu[f"{name}|decode"])
    wall = interleaved_times(calls, repeats=repeats, warmup=warmup, rotate=True)
    for name, runner in runners.items():
        prefill, decode = timing_summary(wall[f"{name}|prefill"]), timing_summary(wall[f"{name}|decode"])
        info[name]["prefill_s"], info[name]["prefill_spread"] = prefill["median"], prefill["spread"]
        info[name]["decode_per_token_s"] = decode["median"] / new_tokens
        info[name]["decode_spread"] = decode["spread"]
        info[name]["prefill_cpu_s"] = timing_summary(cpu[f"{name}|prefill"][warmup:])["median"]
        info[name]["decode_per_token_cpu_s"] = timing_summary(cpu[f"{name}|decode"][warmup:])["median"] / new_tokens
        runner.output = None  # the previous cache is freed before the profiled call starts
        info[name]["peak_tensor_mb"] = peak_tensor_megabytes(lambda runner=runner: (runner.prefill(), runner.decode()))
    for entry in info.values():
        _ratios(entry, info["stock"], new_tokens)
    return {"batch": batch, "prompt_length": info["stock"]["prompt_length"], "text_tokens": text_counts, "settings": info}


__all__ = ["DecodeRunner", "cache_megabytes", "llava_prompts", "llava_shaped_model", "peak_tensor_megabytes", "run_batch"]
