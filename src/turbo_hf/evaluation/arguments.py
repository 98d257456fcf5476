"""Comma-separated command-line values (`--r 0,8,16`, `--modes tome,turbo`), the one parser every script uses, and
the options the in-LLM reduction benchmark scripts share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def comma_list(text: str, convert: Callable[[str], T] = str, name: str = "the argument") -> list[T]:
    """The non-empty, stripped items of a comma-separated string, each passed through `convert`.

    Raises a `ValueError` naming `name` when an item does not convert or no item is given.

    Example:

    ```python
    >>> from turbo_hf.evaluation.arguments import comma_list
    >>> comma_list(" 0, 8,,16", int, "--r")
    [0, 8, 16]
    >>> comma_list("tome,x", float, "--alpha")
    Traceback (most recent call last):
    ...
    ValueError: --alpha takes comma-separated float values, got 'tome,x'.
    ```
    """
    kind = getattr(convert, "__name__", "")
    try:
        values = [convert(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"{name} takes comma-separated {kind} values, got {text!r}.") from error
    if not values:
        raise ValueError(f"{name} takes comma-separated {kind or 'str'} values, got none in {text!r}.")
    return values


def comma_type(convert: Callable[[str], T] = str) -> Callable[[str], list[T]]:
    """An argparse `type=` that reads a comma-separated list (argparse reports a bad value as a usage error).

    Example:

    ```python
    >>> import argparse
    >>> from turbo_hf.evaluation.arguments import comma_type
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--r", type=comma_type(int), default=[8])
    >>> parser.parse_args(["--r", "4,5"]).r
    [4, 5]
    ```
    """

    def parse(text: str) -> list[T]:
        try:
            return comma_list(text, convert, "the value")
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    parse.__name__ = f"comma-separated {getattr(convert, '__name__', 'value')} list"
    return parse


def add_llm_benchmark_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The options of the in-LLM reduction benchmarks (`scripts/benchmark_vlm_llm.py`,
    `scripts/benchmark_llava_next_llm.py`): kept shares, the reduction layer, rounds, threads, attention, output."""
    parser.add_argument("--keep", type=comma_type(float), default=[0.5, 0.25], help="shares kept after --layer")
    parser.add_argument("--layer", type=int, default=2, help="the decoder layer before which images are reduced")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--out", default=out)


__all__ = ["add_llm_benchmark_arguments", "comma_list", "comma_type"]
