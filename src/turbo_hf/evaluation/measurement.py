"""Measurement: synchronisation, FLOPs (`torch.utils.flop_counter`), peak memory, interleaved timing."""

from __future__ import annotations

import functools
import os
import statistics
import threading
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..modeling.patching import is_turbo_applied, remove_turbo
from .settings import Setting, UsageError, use_setting
from .timing import interleaved_times, synchronize


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
) -> dict[str, dict]:
    """Time `call` (one batch of work on `model`) under every setting, fairly.

    `warmup` untimed rounds, then `repeats` timed rounds; each round visits every setting once, starting
    from a setting that rotates from round to round, so that drift of a shared machine hits all alike.
    Turbo is applied before the clock starts and the device is synchronised around every timed call.
    Afterwards, one untimed call per setting measures peak memory and one counts FLOPs.

    Returns:
        For each setting name: `median_ms`, `min_ms`, `max_ms`, `latencies_ms`, `throughput` (samples/s at
        the median), `speedup` (stock median / this median; needs the `stock` setting), `flops`,
        `gflops_per_sample`, `memory`.
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}.")
    settings = list(settings)
    total = (warmup + repeats) * len(settings)
    bar = tqdm(total=total, desc="timing", leave=False, disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            times = interleaved_times(
                {s.name: call for s in settings}, repeats, warmup, rotate=True, device=device,
                prepare={s.name: functools.partial(use_setting, model, s) for s in settings},
                on_call=lambda name, seconds: bar.update(),
            )
        results = {}
        for setting in settings:
            use_setting(model, setting)
            median = statistics.median(times[setting.name])
            entry = {
                "median_ms": 1000 * median,
                "min_ms": 1000 * min(times[setting.name]),
                "max_ms": 1000 * max(times[setting.name]),
                "latencies_ms": [round(1000 * t, 3) for t in times[setting.name]],
                "throughput": batch_size / median,
                "batch_size": batch_size,
                "warmup": warmup,
                "repeats": repeats,
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
    return results
