"""Where Turbo's merge overhead goes: matching, merging, the semantic row and the bias, as shares of layer time.

`profile_merge_overhead` times the stock and Turbo forwards of one model in interleaved rounds, then runs the
Turbo forward again with the merge core's functions (as `turbo_encoder` calls them) wrapped in wall-clock
timers, and reports each component's time per forward, per layer and as a share of the Turbo forward. CPU only
(the pieces are timed synchronously; on an accelerator they would need a synchronisation each).

Example:

```python
>>> import torch
>>> from transformers import ViTConfig, ViTModel
>>> from turbo_hf import TurboConfig, apply_turbo
>>> from turbo_hf.evaluation.merge_profile import profile_merge_overhead
>>> config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
...                    image_size=32, patch_size=8)
>>> stock = ViTModel(config).eval()
>>> turbo = apply_turbo(ViTModel(config).eval(), TurboConfig(r=2))
>>> result = profile_merge_overhead(stock, turbo, torch.randn(1, 3, 32, 32), rounds=1)
>>> sorted(result["components"])
['bias', 'matching', 'merging', 'semantic row']
```
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..modeling import turbo_encoder
from .timing import interleaved_times

# component -> the merge-core functions `turbo_encoder` calls for it
COMPONENTS = {
    "semantic row": ("semantic_value",),
    "matching": ("key_metric", "bipartite_plan"),
    "merging": ("merge_tokens", "update_source"),
    "bias": ("proportional_bias",),
}


@contextmanager
def timed_components(totals: dict[str, float]) -> Iterator[None]:
    """Inside the block, every call `turbo_encoder` makes to a merge-core function adds its wall time (seconds)
    to `totals[component]`; the functions are restored on exit."""
    originals = {}

    def wrap(component: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[component] += time.perf_counter() - start

        return timed

    try:
        for component, names in COMPONENTS.items():
            for name in names:
                originals[name] = getattr(turbo_encoder, name)
                setattr(turbo_encoder, name, wrap(component, originals[name]))
        yield
    finally:
        for name, function in originals.items():
            setattr(turbo_encoder, name, function)


def profile_merge_overhead(
    stock: nn.Module, turbo: nn.Module, pixel_values: torch.Tensor, rounds: int = 5, warmup: int = 1
) -> dict:
    """Stock and Turbo forward medians and the merge components' median time per Turbo forward.

    Returns `{"stock_ms", "turbo_ms", "turbo_spread", "stock_spread", "components": {name: {"ms", "share"}},
    "overhead_share"}`: `share` is the component's time over the Turbo forward's median; `overhead_share` their
    sum.
    """
    with torch.inference_mode():
        times = interleaved_times(
            {"stock": lambda: stock(pixel_values=pixel_values), "turbo": lambda: turbo(pixel_values=pixel_values)},
            repeats=rounds, warmup=warmup, rotate=True,
        )
        per_round = defaultdict(list)
        for _ in range(rounds):
            totals: dict[str, float] = defaultdict(float)
            with timed_components(totals):
                turbo(pixel_values=pixel_values)
            for component in COMPONENTS:
                per_round[component].append(totals[component])
    turbo_s, stock_s = statistics.median(times["turbo"]), statistics.median(times["stock"])
    components = {
        name: {"ms": 1000 * statistics.median(values), "share": statistics.median(values) / turbo_s}
        for name, values in per_round.items()
    }
    spread = {name: (max(v) - min(v)) / statistics.median(v) for name, v in times.items()}
    return {
        "stock_ms": 1000 * stock_s,
        "turbo_ms": 1000 * turbo_s,
        "stock_spread": spread["stock"],
        "turbo_spread": spread["turbo"],
        "components": components,
        "overhead_share": sum(c["share"] for c in components.values()),
    }


def layer_count_limit(layer: nn.Module, counts: list[int], batch: int, rounds: int = 3) -> float:
    """The speed-up a schedule allows given how one stock `layer` really scales with its token count.

    The FLOP limit assumes a layer's cost is linear in its tokens; at small batches it is not (weights are read
    and every op is dispatched whatever the count). This times the stock layer at the input count and at each
    count the schedule leaves (`counts`: tokens entering each layer, as `turbo_plan`'s `token_counts` without
    the last), medians over interleaved rounds, and returns `len(counts) * t(counts[0]) / sum(t(n) for n in
    counts)`: each layer priced at its input count, its MLP included (which runs at r tokens fewer), so a slight
    underestimate of what the schedule allows.
    """
    width = next(p for p in layer.parameters()).shape[-1]
    inputs = {n: torch.randn(batch, n, width) for n in sorted(set(counts))}
    with torch.inference_mode():
        times = interleaved_times({n: (lambda x=x: layer(x)) for n, x in inputs.items()}, repeats=rounds,
                                  warmup=1, rotate=True)
    medians = {n: statistics.median(values) for n, values in times.items()}
    return len(counts) * medians[counts[0]] / sum(medians[n] for n in counts)


__all__ = ["COMPONENTS", "layer_count_limit", "profile_merge_overhead", "timed_components"]
