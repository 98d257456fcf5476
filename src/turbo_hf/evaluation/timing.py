"""Wall-clock timing that is fair on noisy machines: warm-up, round-robin rounds, medians."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the work queued on `device` (CUDA or MPS; every available one when None; no-op on CPU)."""
    device = torch.device(device) if device is not None else None
    kind = device.type if device is not None else None
    if kind in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    if kind in (None, "mps") and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.synchronize()


def interleaved_times(
    runs: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    rotate: bool = False,
    *,
    prepare: dict[str, Callable[[], object]] | None = None,
    device: torch.device | str | None = None,
    on_call: Callable[[str, float], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds of every timed call of each callable, in round-robin rounds so drift hits all of them alike.

    `warmup` untimed rounds, then `repeats` timed rounds; with `rotate`, each round starts one callable later
    than the previous one (so no callable always runs first after a pause). `prepare[name]` (e.g. applying a
    Turbo setting) runs before the clock starts; `device` is synchronised around every timed call (every
    available accelerator when None); `on_call(name, seconds)` is called after every call (a progress bar).

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import interleaved_times
    >>> order = []
    >>> times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
    ...                           repeats=2, warmup=1, rotate=True)
    >>> order, {name: len(values) for name, values in times.items()}
    (['a', 'b', 'b', 'a', 'a', 'b'], {'a': 2, 'b': 2})
    ```
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got {repeats} and {warmup}.")
    unknown = set(prepare or {}) - set(runs)
    if unknown:
        raise ValueError(f"`prepare` names callables that are not in `runs`: {sorted(unknown)}.")
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names) if rotate and names else 0
        for name in names[shift:] + names[:shift]:
            if prepare and name in prepare:
                prepare[name]()
            synchronize(device)
            start = time.perf_counter()
            runs[name]()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                samples[name].append(elapsed)
            if on_call is not None:
                on_call(name, elapsed)
    return samples


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, timed in round-robin rounds so drift hits all of them alike.

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import interleaved_medians
    >>> sorted(interleaved_medians({"a": lambda: None, "b": lambda: None}, repeats=3))
    ['a', 'b']
    ```
    """
    samples = interleaved_times(runs, repeats=repeats, warmup=warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def timing_summary(samples: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread `(max - min) / median` of timed samples (seconds).

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import timing_summary
    >>> timing_summary([1.0, 1.2, 0.8])
    {'median': 1.0, 'min': 0.8, 'max': 1.2, 'spread': 0.3999999999999999}
    ```
    """
    if not samples:
        raise ValueError("`samples` must hold at least one timing.")
    median = statistics.median(samples)
    return {"median": median, "min": min(samples), "max": max(samples), "spread": (max(samples) - min(samples)) / median}


def load_warning(threads: int) -> str | None:
    """A warning when other work shares the CPUs: the 1-minute load average plus the `threads` a benchmark adds
    exceeds the cores (timings then carry that contention); None on a quiet machine or where load is unknown."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load + threads <= cores:
        return None
    return (f"load average {load:.1f} with {threads} benchmark thread(s) on {cores} cores: other work shares the "
            "CPUs, so timings are noisy (compare settings within one run, through their medians and spread)")


__all__ = ["interleaved_medians", "interleaved_times", "load_warning", "synchronize", "timing_summary"]
