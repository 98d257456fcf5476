"""Speed and memory of image-token reduction inside a VLM's language model against the stock model, in one run.

Model-agnostic: a benchmark script gives the stock model, how to build each setting's variant (same weights) and
its inputs; `measure_settings` times, for every setting and the stock model in round-robin rounds
(`timing.interleaved_times`, medians with their spread):

- prefill: one forward over the prompt with the images (`use_cache=True`, `logits_to_keep=1`, as `generate()`
  runs it);
- decode: `new_tokens` greedy steps on that prefill's KV cache (one token per sample per step, as `generate()`
  runs them), reported per token; the cache is cut back after each timed run (`cache.crop`);
- wall clock and, separately, process CPU time (with one torch thread the CPU time is the compute itself, not
  time spent waiting for a core on a shared machine);
- memory: the peak of tensor memory allocated during one prefill + decoding, from the torch profiler
  (`profile_memory=True`: allocations minus frees in time order; weights excluded), and the KV cache after the
  prefill, with the tokens each layer caches.

Used by `scripts/benchmark_vlm_llm.py` (Qwen2-VL), `scripts/benchmark_llava_llm.py` (LLaVA-1.5) and
`scripts/benchmark_llava_next_llm.py`; `shared_variant` and `word_ids` serve their model and prompt builders.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile
from transformers.utils import logging

from ..modeling.compat import cache_kwargs, cache_of
from ..modeling.llm_token_masks import STATE_ATTRIBUTE
from ..modeling.patching import apply_turbo
from .report import run_metadata
from .timing import cpu_clocked, interleaved_times, load_warning, timing_summary

logger = logging.get_logger(__name__)


class DecodeRunner:
    """Prefill and decode callables for one model setting on one batch.

    Args:
        model: the model (stock or patched).
        inputs: the prompt's inputs (`input_ids`, `attention_mask`, pixels, ...).
        new_tokens: greedy decoding steps per `decode()` call.
        positions: `"1d"`: 1-D `position_ids` from the padding mask (LLaVA); `"mrope"`: the prefill computes its own
            (Qwen2-VL's 3-D positions from `get_rope_index`, which keeps `rope_deltas` on `model.model`), each
            decoding step gets the text position plus those deltas, as `generate()` passes them.
    """

    def __init__(self, model, inputs: dict, new_tokens: int, positions: str = "1d"):
        if positions not in ("1d", "mrope"):
            raise ValueError(f"`positions` must be '1d' or 'mrope', got {positions!r}.")
        self.model, self.inputs, self.new_tokens, self.mrope = model, inputs, new_tokens, positions == "mrope"
        mask = inputs["attention_mask"]
        self.positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        self.output = None

    def prefill(self):
        extra = {} if self.mrope else {"position_ids": self.positions}
        with torch.no_grad():
            self.output = self.model(**self.inputs, **extra, use_cache=True, logits_to_keep=1, return_dict=True)
        return self.output

    def decode(self):
        """`new_tokens` greedy steps on the prefill's cache, then the cache is cut back to the prefill."""
        cache = cache_of(self.output)
        token = self.output.logits[:, -1].argmax(-1, keepdim=True)
        mask = self.inputs["attention_mask"]
        position = self.positions[:, -1:]
        tokens = []
        with torch.no_grad():
            for _ in range(self.new_tokens):
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                position = position + 1
                ids = (position + self.model.model.rope_deltas)[None] if self.mrope else position
                out = self.model(input_ids=token, attention_mask=mask, position_ids=ids, use_cache=True,
                                 **cache_kwargs(cache), logits_to_keep=1, return_dict=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
        cache.crop(-self.new_tokens)
        return torch.cat(tokens, dim=1)


def cache_megabytes(cache) -> float:
    """Size of a KV cache's keys and values in MiB."""
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers) / 2**20


def peak_tensor_megabytes(call: Callable[[], object]) -> float:
    """Peak of tensor memory allocated during `call` (torch profiler; allocations minus frees, in time order)."""
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


def measure_settings(
    settings: list[tuple[str, dict | None]],
    build: Callable[[dict | None], tuple[object, dict, dict]],
    repeats: int,
    warmup: int,
    new_tokens: int,
    positions: str = "1d",
) -> dict[str, dict]:
    """Prefill / decode time, peak memory and KV cache of every setting; the first setting is the reference.

    Args:
        settings: `(name, turbo settings or None for stock)`.
        build: `turbo -> (model, inputs, info)`: the variant (same weights), its inputs and what to report with it.
        repeats, warmup: timed and untimed interleaved rounds.
        new_tokens: decoding steps per timed decode.
        positions: how the decoding steps get their positions (`DecodeRunner`).

    Returns:
        Per setting: `info` plus `cache_tokens_per_layer`, `kv_cache_mb`, `reduced_layers`, `prefill_s`,
        `decode_per_token_s` (medians) with `*_spread`, CPU-time medians, `peak_tensor_mb` and the ratios to the
        reference (`prefill_speedup`, `decode_speedup`, `*_cpu`, `peak_memory_ratio`, `kv_cache_ratio`,
        `token_layer_limit`: the language model's prefill work if it were linear in tokens).
    """
    runners, result = {}, {}
    for name, turbo in settings:
        model, inputs, info = build(turbo)
        runner = DecodeRunner(model, inputs, new_tokens, positions)
        cache = cache_of(runner.prefill())
        state = getattr(cache, STATE_ATTRIBUTE, None)
        result[name] = {
            **info,
            "prompt_length": inputs["input_ids"].shape[1],
            "cache_tokens_per_layer": [layer.keys.shape[2] for layer in cache.layers],
            "kv_cache_mb": cache_megabytes(cache),
            "reduced_layers": None if state is None else state.layers,
        }
        runners[name] = runner
    calls, cpu = {}, {}
    for name, runner in runners.items():
        for part in ("prefill", "decode"):
            cpu[f"{name}|{part}"] = []
            calls[f"{name}|{part}"] = cpu_clocked(getattr(runner, part), cpu[f"{name}|{part}"])
    samples = interleaved_times(calls, repeats=repeats, warmup=warmup, rotate=True)
    for name, runner in runners.items():
        entry = result[name]
        prefill, decode = timing_summary(samples[f"{name}|prefill"]), timing_summary(samples[f"{name}|decode"])
        entry.update(prefill_s=prefill["median"], prefill_spread=prefill["spread"],
                     decode_per_token_s=decode["median"] / new_tokens, decode_spread=decode["spread"],
                     prefill_cpu_s=statistics.median(cpu[f"{name}|prefill"][warmup:]),
                     decode_per_token_cpu_s=statistics.median(cpu[f"{name}|decode"][warmup:]) / new_tokens)

        def both(runner=runner):
            runner.prefill()
            runner.decode()

        runner.output = None  # the previous cache is freed before the profiled call starts
        entry["peak_tensor_mb"] = peak_tensor_megabytes(both)
    stock = next(iter(result.values()))
    for entry in result.values():
        entry["prefill_speedup"] = stock["prefill_s"] / entry["prefill_s"]
        entry["decode_speedup"] = stock["decode_per_token_s"] / entry["decode_per_token_s"]
        entry["prefill_speedup_cpu"] = stock["prefill_cpu_s"] / entry["prefill_cpu_s"]
        entry["decode_speedup_cpu"] = stock["decode_per_token_cpu_s"] / entry["decode_per_token_cpu_s"]
        entry["peak_memory_ratio"] = entry["peak_tensor_mb"] / stock["peak_tensor_mb"]
        entry["kv_cache_ratio"] = entry["kv_cache_mb"] / stock["kv_cache_mb"]
        entry["token_layer_limit"] = sum(stock["cache_tokens_per_layer"]) / sum(entry["cache_tokens_per_layer"])
    warning = load_warning(torch.get_num_threads())
    if warning:
        logger.warning(warning)
    return result


def shared_variant(model: torch.nn.Module, turbo: dict | None) -> torch.nn.Module:
    """A copy of the stock `model` that shares its parameters and buffers (no second copy of the weights, in their
    own dtype and device: a real checkpoint's setting variants fit in memory), patched with `turbo` (None: stock),
    in eval mode. `apply_turbo` only swaps the copy's module classes, so the original stays stock."""
    memo = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    variant = copy.deepcopy(model, memo)
    if turbo is not None:
        apply_turbo(variant, **turbo)
    return variant.eval()


def word_ids(vocab_size: int, special: Iterable[int | None], low: int = 10, high: int = 990) -> torch.Tensor:
    """The ids random prompt words are drawn from: `[low, min(high, vocab_size))` without the `special` ids (image
    and vision markers, BOS, ...), so that they fit any checkpoint's vocabulary and never stand for an image.

    Example:

    ```python
    >>> from turbo_hf.evaluation.llm_reduction_benchmark import word_ids
    >>> word_ids(16, special=[4, 12, None]).tolist()
    [10, 11, 13, 14, 15]
    ```
    """
    ids = torch.arange(min(low, vocab_size), min(high, vocab_size))
    ids = ids[~torch.isin(ids, torch.tensor([i for i in special if i is not None], dtype=torch.long))]
    if not len(ids):
        raise ValueError(f"No word ids left in [{low}, {min(high, vocab_size)}) of a vocabulary of {vocab_size}.")
    return ids


def random_words(ids: torch.Tensor, count: int, generator: torch.Generator) -> list[int]:
    """`count` ids drawn uniformly from `ids` (`word_ids`) with `generator`."""
    return ids[torch.randint(0, len(ids), (count,), generator=generator)].tolist()


def script_metadata(args, model, repeats: int, new_tokens: int, start: float, random_label: str) -> dict:
    """The run metadata of an in-LLM benchmark script (`args`: its `--checkpoint`, `--warmup`, `--attn`, `--quick`):
    `report.run_metadata`, the runtime since `start`, the model folder (or `random_label`), the load warning."""
    meta = run_metadata(checkpoint=args.checkpoint, text_layers=model.config.text_config.num_hidden_layers,
                        repeats=repeats, warmup=args.warmup, new_tokens=new_tokens, attn=args.attn, quick=args.quick)
    meta["runtime_s"] = time.time() - start
    meta["model"] = {"folder": args.checkpoint or random_label}
    meta["load_warning"] = load_warning(torch.get_num_threads())
    return meta


__all__ = ["DecodeRunner", "cache_megabytes", "measure_settings", "peak_tensor_megabytes", "random_words",
           "script_metadata", "shared_variant", "word_ids"]
