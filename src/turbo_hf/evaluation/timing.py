"""Wall-clock timing that is fair on noisy machines: warm-up, round-robin rounds, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.synchronize(device)


def interleaved_times(
    runs: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, rotate: bool = False
) -> dict[str, list[float]]:
    """Seconds of every timed call of each callable, in round-robin rounds so drift hits all of them alike.

    `warmup` untimed rounds, then `repeats` timed rounds; with `rotate`, each round starts one callable later
    than the previous one (so no callable always runs first after a pause). The device is synchronised
    around every timed call.

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import interleaved_times
    >>> {name: len(times) for name, times in interleaved_times({"a": lambda: None}, repeats=3).items()}
    {'a': 3}
    ```
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got {repeats} and {warmup}.")
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names) if rotate and names else 0
        for name in names[shift:] + names[:shift]:
            synchronize()
            start = time.perf_counter()
            runs[name]()
            synchronize()
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
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


__all__ = ["interleaved_medians", "interleaved_times", "synchronize", "timing_summary"]
