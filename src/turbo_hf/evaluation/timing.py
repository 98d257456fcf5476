"""Wall-clock timing that is fair on noisy machines: warm-up, round-robin rounds, medians with their spread, a
fixed thread count, and warnings when the machine makes a ratio unreliable.

The one timing path of `turbo-hf demo`, `turbo-hf bench`, the evaluation scripts and the benchmarks:
`timed_rounds` (or `interleaved_times` for the bare samples) measures, `timing_warnings` says whether to trust it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import torch

# Torch threads the demo and `turbo-hf bench` time with unless told otherwise: with one thread a speed-up measures
# the work merging removes and holds on a machine whose other cores are busy; with several, their synchronisation
# (which does not shrink with the tokens) and any other job on the machine move it.
DEFAULT_THREADS = 1
# Rounds whose interquartile range exceeds this fraction of the median are too noisy for a ratio.
SPREAD_LIMIT = 0.10
# The timed calls must get at least this share of the CPU time their threads ask for (else other work competed).
CPU_SHARE_LIMIT = 0.85
# A measured speed-up this much above its FLOP limit means the reference rounds were slowed by something else.
EFFICIENCY_LIMIT = 1.05


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
    """Median, min, max, quartiles and relative spreads of timed samples (seconds).

    `spread` is `(max - min) / median` (one slow round shows there), `iqr_spread` the interquartile range over
    the median (what moves the median: `timing_warnings` reads it).

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import timing_summary
    >>> summary = timing_summary([1.0, 1.1, 0.9, 1.0, 3.0])
    >>> summary["median"], summary["max"], round(summary["spread"], 2), round(summary["iqr_spread"], 2)
    (1.0, 3.0, 2.1, 0.1)
    ```
    """
    if not samples:
        raise ValueError("`samples` must hold at least one timing.")
    median = statistics.median(samples)
    q1, q3 = (statistics.quantiles(samples, n=4, method="inclusive")[i] for i in (0, 2)) if len(samples) > 1 else (median, median)
    return {"median": median, "min": min(samples), "max": max(samples), "q1": q1, "q3": q3,
            "spread": (max(samples) - min(samples)) / median, "iqr_spread": (q3 - q1) / median}


def cpu_clocked(call: Callable[[], object], seconds: list[float]) -> Callable[[], None]:
    """`call`, appending the CPU time the process spent in it to `seconds` (with one torch thread: the compute
    itself, not time spent waiting for a core on a shared machine)."""

    def run() -> None:
        start = time.process_time()
        call()
        seconds.append(time.process_time() - start)

    return run


def round_speedups(samples: Mapping[str, list[float]], reference: str = "stock") -> dict[str, dict[str, float]]:
    """`timing_summary` of each callable's speed-up over `reference` round by round (the two ran in the same
    round, so drift of the machine cancels): its quartiles are the range to quote with the median speed-up.

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import round_speedups
    >>> speedups = round_speedups({"stock": [2.0, 4.0, 2.2], "turbo": [1.0, 2.0, 1.0]})
    >>> speedups["turbo"]["median"], speedups["turbo"]["max"]
    (2.0, 2.2)
    ```
    """
    base = samples[reference]
    return {name: timing_summary([ref / value for ref, value in zip(base, values)])
            for name, values in samples.items() if name != reference}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one, else `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run the block with `torch.set_num_threads(threads)` (None: leave torch's setting); yields the count used.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.evaluation.timing import fixed_threads
    >>> before = torch.get_num_threads()
    >>> with fixed_threads(1) as threads:
    ...     threads, torch.get_num_threads()
    (1, 1)
    >>> torch.get_num_threads() == before
    True
    ```
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` (--threads) must be a positive integer or None, got {threads!r}.")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def timed_rounds(
    runs: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    *,
    threads: int | None = None,
    prepare: dict[str, Callable[[], object]] | None = None,
    device: torch.device | str | None = None,
    on_call: Callable[[str, float], object] | None = None,
) -> dict:
    """`interleaved_times` (rotating rounds) with `threads` torch threads, plus what the machine did meanwhile.

    Returns:
        `{"samples": {name: [seconds]}, "summary": {name: timing_summary}, "machine": {"threads", "cpus",
        "load_average" (1-minute load before timing: other work), "cpu_share"}}`. `cpu_share` is the CPU time
        the process got during the timed rounds over `threads` x their wall time (on CPU): well below 1 when
        other work took the cores this timing asked for (None on an accelerator, where it means nothing).

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import timed_rounds
    >>> result = timed_rounds({"a": lambda: sum(range(1000)), "b": lambda: None}, repeats=3, threads=1)
    >>> sorted(result["summary"]), result["machine"]["threads"]
    (['a', 'b'], 1)
    ```
    """
    load = load_average()
    with fixed_threads(threads) as used:
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        samples = interleaved_times(runs, repeats, warmup, rotate=True, prepare=prepare, device=device, on_call=on_call)
        cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    on_cpu = device is None or torch.device(device).type == "cpu"
    share = cpu / (wall * min(used, available_cpus())) if on_cpu and wall > 0 else None
    return {
        "samples": samples,
        "summary": {name: timing_summary(values) for name, values in samples.items()},
        "machine": {"threads": used, "cpus": available_cpus(), "load_average": load, "cpu_share": share},
    }


def timing_warnings(
    summary: Mapping[str, Mapping[str, float]],
    machine: Mapping[str, object],
    speedups: Mapping[str, tuple[float, float]] | None = None,
) -> list[str]:
    """Why a measured ratio may not be trusted: noisy rounds, a busy machine, a speed-up above its FLOP limit.

    A busy machine shows in the CPU share the timed calls got (measured during the timing, on CPU); where there is
    none (an accelerator), in the 1-minute load average against the free cores (it lags: the work of the last
    minute, this process's own included, still counts).

    Args:
        summary: `timing_summary` of each timed callable (`timed_rounds(...)["summary"]`).
        machine: `timed_rounds(...)["machine"]` (`threads`, `cpus`, `load_average`, `cpu_share`).
        speedups: `{name: (measured speed-up, FLOP limit)}` of the settings to check against their limit.

    Example:

    ```python
    >>> from turbo_hf.evaluation.timing import timing_warnings
    >>> machine = {"threads": 1, "cpus": 2, "load_average": 0.1, "cpu_share": 0.99}
    >>> timing_warnings({"stock": {"iqr_spread": 0.01}}, machine, {"r=16": (1.6, 1.66)})
    []
    >>> timing_warnings({"stock": {"iqr_spread": 0.3}}, machine, {"r=16": (2.0, 1.66)})[1][:37]
    'r=16: measured speed-up 2.00x exceeds'
    ```
    """
    found = []
    noisy = {name: s["iqr_spread"] for name, s in summary.items() if s["iqr_spread"] > SPREAD_LIMIT}
    if noisy:
        listed = ", ".join(f"{name} {spread:.0%}" for name, spread in noisy.items())
        found.append(f"timings spread more than {SPREAD_LIMIT:.0%} between rounds (interquartile range over the "
                     f"median: {listed}): the speed-ups are unreliable; rerun on a quiet machine or with more --repeats.")
    threads, cpus, load, share = (machine.get(key) for key in ("threads", "cpus", "load_average", "cpu_share"))
    if share is not None and share < CPU_SHARE_LIMIT:
        found.append(f"the timed calls got {share:.0%} of the CPU time their {threads} thread(s) asked for: other work "
                     "competes for the cores, so the speed-ups are unreliable; rerun on a quiet machine"
                     + (" or with fewer --threads." if threads > 1 else "."))
    elif share is None and load is not None and cpus and load + threads > cpus + 0.5:
        found.append(f"load average {load:.1f} on {cpus} CPUs before timing with {threads} thread(s): other work "
                     "competes for the cores, so the speed-ups may be unreliable; rerun on a quiet machine"
                     + (" or with fewer --threads." if threads > 1 else "."))
    for name, (speedup, limit) in (speedups or {}).items():
        if limit and speedup > limit * EFFICIENCY_LIMIT:
            found.append(f"{name}: measured speed-up {speedup:.2f}x exceeds its FLOP limit {limit:.2f}x (efficiency "
                         f"{speedup / limit:.0%}): the stock rounds were slowed by something else, so it is unreliable.")
    return found


def load_warning(threads: int) -> str | None:
    """A warning when other work shares the CPUs: the 1-minute load average plus the `threads` a benchmark adds
    exceeds the usable cores (timings then carry that contention); None on a quiet machine or where load is
    unknown. For runs that have no CPU share of their own to judge by (`timing_warnings` has)."""
    load, cores = load_average(), available_cpus()
    if load is None or load + threads <= cores:
        return None
    return (f"load average {load:.1f} with {threads} benchmark thread(s) on {cores} cores: other work shares the "
            "CPUs, so timings are noisy (compare settings within one run, through their medians and spread)")


__all__ = [
    "cpu_clocked",
    "CPU_SHARE_LIMIT",
    "DEFAULT_THREADS",
    "EFFICIENCY_LIMIT",
    "SPREAD_LIMIT",
    "available_cpus",
    "fixed_threads",
    "interleaved_medians",
    "interleaved_times",
    "load_average",
    "load_warning",
    "round_speedups",
    "synchronize",
    "timed_rounds",
    "timing_summary",
    "timing_warnings",
]
