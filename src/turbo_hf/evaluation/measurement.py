"""Measurement: synchronisation, FLOPs (`torch.utils.flop_counter`), peak memory, interleaved timing."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers.utils import logging

from ..modeling.patching import is_turbo_applied, remove_turbo
from .settings import Setting, UsageError, use_setting
from .timing import synchronize, timed_rounds, timing_warnings

logger = logging.get_logger(__name__)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one call, counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
    fused attention; the CPU flash-attention kernel is added, which torch does not count by itself)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        custom[cpu_flash] = _sdpa_cpu_flops
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        call()
    return int(counter.get_total_flops())


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:
        return None


def peak_memory(call: Callable[[], object], device: torch.device) -> dict:
    """Peak memory of one call: CUDA allocator peak (and its increase over the start) on GPU, else the
    process's resident memory sampled every millisecond during the call."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            call()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"kind": "cuda_max_allocated", "peak_mb": peak / 2**20, "increase_mb": (peak - start) / 2**20}
    start = _rss_bytes()
    if start is None:
        with torch.inference_mode():
            call()
        return {"kind": "unavailable", "peak_mb": None, "increase_mb": None}
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            value = _rss_bytes()
            if value is not None and value > peak[0]:
                peak[0] = value
            stop.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with torch.inference_mode():
            call()
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes() or 0)
    return {"kind": "process_rss", "peak_mb": peak[0] / 2**20, "increase_mb": (peak[0] - start) / 2**20}


def measure_settings(
    model: nn.Module,
    settings: Sequence[Setting],
    call: Callable[[], object],
    batch_size: int,
    device: torch.device | str,
    warmup: int = 1,
    repeats: int = 5,
    flops: bool = True,
    memory: bool = True,
    progress: bool = True,
    *,
    threads: int | None = None,
    warn: bool = True,
) -> dict[str, dict]:
    """Time `call` (one batch of work on `model`) under every setting, fairly (`turbo_hf.evaluation.timing`).

    `warmup` untimed rounds, then `repeats` timed rounds with `threads` torch threads (None: torch's current
    count); each round visits every setting once, starting from a setting that rotates from round to round,
    so that drift of a shared machine hits all alike. Turbo is applied before the clock starts and the device
    is synchronised around every timed call. Afterwards, one untimed call per setting measures peak memory and
    one counts FLOPs. With `warn`, noisy rounds or a busy machine are logged as a warning
    (`timing.timing_warnings`; callers that know the FLOP limits check those too and pass `warn=False`).

    Returns:
        For each setting name: `median_ms`, `min_ms`, `max_ms`, `q1_ms`, `q3_ms`, `iqr_spread`, `latencies_ms`,
        `throughput` (samples/s at the median), `speedup` (stock median / this median; needs the `stock`
        setting), `flops`, `gflops_per_sample`, `memory`, and `machine` (the same for all: `threads`, `cpus`,
        `load_average`, `cpu_share` of `timed_rounds`).
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}.")
    settings = list(settings)
    total = (warmup + repeats) * len(settings)
    bar = tqdm(total=total, desc="timing", leave=False, disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            timed = timed_rounds(
                {s.name: call for s in settings}, repeats, warmup, threads=threads, device=device,
                prepare={s.name: functools.partial(use_setting, model, s) for s in settings},
                on_call=lambda name, seconds: bar.update(),
            )
        results = {}
        for setting in settings:
            use_setting(model, setting)
            summary = timed["summary"][setting.name]
            entry = {
                **{f"{key}_ms": 1000 * summary[key] for key in ("median", "min", "max", "q1", "q3")},
                "iqr_spread": summary["iqr_spread"],
                "latencies_ms": [round(1000 * t, 3) for t in timed["samples"][setting.name]],
                "throughput": batch_size / summary["median"],
                "batch_size": batch_size,
                "warmup": warmup,
                "repeats": repeats,
                "machine": timed["machine"],
            }
            if memory:
                entry["memory"] = peak_memory(call, device)
            if flops:
                entry["flops"] = count_flops(call)
                entry["gflops_per_sample"] = entry["flops"] / batch_size / 1e9
            results[setting.name] = entry
    finally:
        bar.close()
        if is_turbo_applied(model):
            remove_turbo(model)
    if "stock" in results:
        stock = results["stock"]["median_ms"]
        for entry in results.values():
            entry["speedup"] = stock / entry["median_ms"]
    if warn:
        for warning in timing_warnings(timed["summary"], timed["machine"]):
            logger.warning(f"Timing: {warning}")
    return results
