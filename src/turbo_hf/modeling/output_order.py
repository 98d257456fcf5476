"""Turbo outputs with their fields in the stock order, so that tuple outputs index like the stock model's."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable


def stock_field_order(forward: Callable) -> Callable:
    """Decorator (outermost) for a Turbo forward wrapped in `capture_outputs` whose output class adds fields
    (`token_sizes`, `token_source`, ...) after the fields of a stock output class.

    `capture_outputs` sets `hidden_states`/`attentions` after the forward has built its output, and a `ModelOutput`
    lists its fields in the order they were set: without this, `to_tuple()` (what `return_dict=False` returns) and
    integer indexing would give `token_sizes` where the stock model gives `hidden_states`. The wrapper runs the
    forward with `return_dict=True`, rebuilds the output with its fields in declaration order (the stock fields
    first, the added ones after them) and then honours `return_dict` as the stock forward does (argument, else
    `config.return_dict`), so a stock tuple is a prefix of the Turbo tuple.
    """

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        output = forward(self, *args, return_dict=True, **kwargs)
        output = type(output)(**{field.name: getattr(output, field.name) for field in dataclasses.fields(output)})
        return output if return_dict else output.to_tuple()

    return wrapper


__all__ = ["stock_field_order"]
