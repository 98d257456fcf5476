"""Data parallelism with Accelerate for the evaluation scripts: whole global batches dealt out to processes,
per-sample results gathered; one process on CPU needs no launcher."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from .settings import UsageError


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
    over gloo): the runner asks Accelerate for CPU whenever CUDA is absent.
    """

    def __init__(self, cpu: bool = False) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available())

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
    """Run `work(indices) -> records` over this process's batches, gather, and sort by `record["index"]`."""
    mine = runner.batches(count, batch_size)
    records = []
    for indices in runner.progress(mine, desc=desc, total=len(mine)):
        records.extend(work(indices))
    everything = runner.gather(records)
    everything.sort(key=lambda record: record["index"])
    return everything
