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


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, timed in round-robin rounds so drift hits all of them alike.

    Example:

    ```python
    >>> from turbo_hf.timing import interleaved_medians
    >>> sorted(interleaved_medians({"a": lambda: None, "b": lambda: None}, repeats=3))
    ['a', 'b']
    ```
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got {repeats} and {warmup}.")
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


__all__ = ["interleaved_medians", "synchronize"]
