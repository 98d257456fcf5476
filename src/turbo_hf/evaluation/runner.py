"""Data parallelism with Accelerate for the evaluation scripts: whole global batches dealt out to processes,
per-sample results gathered; one process on CPU needs no launcher.

What `accelerate launch` (1.x) starts: `--multi_gpu --num_processes N` starts N processes, also on a machine
without GPUs (Accelerate then runs them on CPU over gloo, `DistributedType.MULTI_CPU`); `--num_processes N`
alone, and `--cpu --num_processes N`, start ONE process (the "simple" launcher; it only sets `MASTER_ADDR`) unless
the machine has several GPUs. `Runner` warns when the processes running are fewer than the ones asked for
(`launch_warning`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from transformers.utils import logging

from .settings import UsageError

logger = logging.get_logger(__name__)
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _launcher_arguments() -> list[str] | None:
    """The parent process's command line (Linux), or None when it cannot be read."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return None


def requested_processes(arguments: Sequence[str], script: str | None = None) -> int | None:
    """The `--num_processes N` (or `--num-processes=N`) of an `accelerate launch` command line, read up to the
    launched `script`; None when it has none.

    Example:

    ```python
    >>> from turbo_hf.evaluation.runner import requested_processes
    >>> command = ["accelerate", "launch", "--num_processes", "2", "eval.py", "--num_processes", "9"]
    >>> requested_processes(command, "eval.py")
    2
    ```
    """
    arguments = list(arguments)
    if script is not None and script in arguments:
        arguments = arguments[: arguments.index(script)]
    for index, argument in enumerate(arguments):
        for flag in ("--num_processes", "--num-processes"):
            value = None
            if argument == flag and index + 1 < len(arguments):
                value = arguments[index + 1]
            elif argument.startswith(flag + "="):
                value = argument.split("=", 1)[1]
            if value is not None and value.isdigit():
                return int(value)
    return None


def launch_warning(
    num_processes: int,
    environ: Mapping[str, str] | None = None,
    launcher_arguments: Sequence[str] | None = None,
    script: str | None = None,
) -> str | None:
    """Why this run has fewer processes than `accelerate launch` was asked for, or None.

    Only under `accelerate launch` (it sets `ACCELERATE_MIXED_PRECISION`): the count asked for is the launcher's
    `--num_processes` (`launcher_arguments`, default: the parent process's command line, read up to `script`,
    default `sys.argv[0]`). When that command line cannot be read (no /proc), the simple launcher's mark tells:
    `MASTER_ADDR` set (it sets it only for more than one process) but no world size.
    """
    environ = os.environ if environ is None else environ
    if "ACCELERATE_MIXED_PRECISION" not in environ:
        return None
    if launcher_arguments is None:
        launcher_arguments = _launcher_arguments()
    if launcher_arguments is None:
        asked = None
        if "MASTER_ADDR" not in environ or any(name in environ for name in _WORLD_SIZE_VARIABLES) or num_processes > 1:
            return None
        asked_text = "more than one process"
    else:
        asked = requested_processes(launcher_arguments, sys.argv[0] if script is None else script)
        if asked is None or asked <= num_processes:
            return None
        asked_text = f"{asked} processes (`--num_processes {asked}`)"
    wanted = asked or "N"
    return (
        f"`accelerate launch` was asked for {asked_text}, but this run has {num_processes}: without `--multi_gpu` "
        "it starts a single process unless the machine has several GPUs, and `--cpu` does not change that. "
        f"Run `accelerate launch --multi_gpu --num_processes {wanted} ...` (also on a machine without GPUs: the "
        "processes then run on CPU over gloo), or set `distributed_type` in `accelerate config`."
    )


def shard_batches(indices: Sequence[int] | int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Global batches of `batch_size` consecutive indices, dealt round-robin: process `rank` of `world` gets
    batches rank, rank + world, ... Each sample lands in the same batch whatever `world` is.

    Example:

    ```python
    >>> from turbo_hf.evaluation.driver import shard_batches
    >>> shard_batches(5, 2, rank=1, world=2)
    [[2, 3]]
    ```
    """
    if batch_size < 1:
        raise UsageError(f"The batch size must be >= 1, got {batch_size}.")
    indices = list(range(indices) if isinstance(indices, int) else indices)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return batches[rank::world]


class Runner:
    """Data-parallel evaluation with Accelerate.

    Every process runs the same settings in the same order. Samples are cut into global batches of
    `batch_size` (in dataset order) and batch `i` goes to process `i % num_processes`, so each sample is
    computed in the same batch whatever the number of processes; `gather` returns every process's records
    to every process. Without a launcher this is one process (on CUDA when available, else CPU).

    `accelerate launch --multi_gpu --num_processes 2 ...` also works on a CPU-only machine (two processes
    over gloo): the runner asks Accelerate for CPU whenever CUDA is absent. Fewer processes than the launcher
    was asked for (`--num_processes 2` without `--multi_gpu`) give a warning (`launch_warning`).
    """

    def __init__(self, cpu: bool = False) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available())
        warning = launch_warning(self.num_processes)
        if warning is not None and self.is_main:
            logger.warning(warning)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    def batches(self, indices: Sequence[int] | int, batch_size: int) -> list[list[int]]:
        """This process's share of the global batches of `indices` (or of `range(indices)`)."""
        return shard_batches(indices, batch_size, self.process_index, self.num_processes)

    def gather(self, records: list) -> list:
        """Every process's records (python objects), concatenated in process order."""
        if self.num_processes == 1:
            return list(records)
        from accelerate.utils import gather_object

        return gather_object(list(records))

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def main_process_first(self):
        """Context manager: the main process runs the block first (downloads, caches), then the others."""
        return self.accelerator.main_process_first()

    def progress(self, iterable: Iterable, desc: str, total: int | None = None):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=not self.is_main, leave=False, dynamic_ncols=True)

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)


def run_batches(runner: Runner, count: int, batch_size: int, work: Callable[[list[int]], list], desc: str) -> list:
    """Run `work(indices) -> records` (one record per index) over this process's batches, gather, and sort by
    `record["index"]`; every index comes back exactly once, whatever the number of processes (no padding
    duplicates, unlike `gather_for_metrics` on a padded loader), else a `RuntimeError`."""
    mine = runner.batches(count, batch_size)
    records = []
    for indices in runner.progress(mine, desc=desc, total=len(mine)):
        records.extend(work(indices))
    everything = runner.gather(records)
    everything.sort(key=lambda record: record["index"])
    if [record["index"] for record in everything] != list(range(count)):
        raise RuntimeError(f"{desc}: the {runner.num_processes} process(es) did not return each of the {count} "
                           f"samples once ({len(everything)} records).")
    return everything
