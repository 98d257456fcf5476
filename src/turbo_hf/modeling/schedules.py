"""Per-layer reduction schedules: constant, list and decreasing `r`, `min_tokens`, and FLOP budgets.

A schedule is resolved for a concrete encoder (layer count, cost per token) and input length, because the
bipartite limit, `min_tokens` and a FLOP budget all depend on how many tokens there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .merging import max_reduction


@dataclass(frozen=True)
class LayerCost:
    """Multiply-accumulates of one transformer layer, per token.

    Attributes:
        attention_per_token: MACs of the attention projections for one token (q, k, v and output).
        mlp_per_token: MACs of the MLP for one token.
        hidden_size: width of the attention (for the N^2 part: QK^T and AV cost 2 * N^2 * hidden_size).
    """

    attention_per_token: int
    mlp_per_token: int
    hidden_size: int

    def macs(self, tokens_in: int, tokens_out: int) -> int:
        """MACs of a layer that attends over `tokens_in` tokens and runs its MLP on `tokens_out`."""
        attention = tokens_in * self.attention_per_token + 2 * tokens_in * tokens_in * self.hidden_size
        return attention + tokens_out * self.mlp_per_token


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _parts(layer: nn.Module, names: str | tuple[str, ...]) -> list[nn.Module]:
    return [getattr(layer, name) for name in ((names,) if isinstance(names, str) else names)]


def layer_cost(layer: nn.Module, attention_attr: str | tuple[str, ...], mlp_attr: str | tuple[str, ...]) -> LayerCost:
    """Per-token MACs of a layer, counted from the Linear modules of its attention and MLP parts (the one
    `LayerCost` builder: every encoder Turbo patches, and anything that needs the cost of one, calls it).

    Args:
        layer: one transformer layer.
        attention_attr: name(s) of its attention module(s); the first is the self-attention, whose input width
            is the `hidden_size` of the N^2 part (in_features, not out_features: a fused qkv projection is 3x
            wider than the attention).
        mlp_attr: name(s) of its MLP module(s).

    Example:

    ```python
    >>> from torch import nn
    >>> from turbo_hf.modeling.schedules import layer_cost
    >>> layer = nn.Module()
    >>> layer.attn, layer.mlp = nn.Linear(8, 24), nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 8))
    >>> layer_cost(layer, "attn", "mlp")
    LayerCost(attention_per_token=192, mlp_per_token=512, hidden_size=8)
    ```
    """
    attention = _parts(layer, attention_attr)
    hidden = max(m.in_features for m in attention[0].modules() if isinstance(m, nn.Linear))
    return LayerCost(
        attention_per_token=sum(_linear_macs(part) for part in attention),
        mlp_per_token=sum(_linear_macs(part) for part in _parts(layer, mlp_attr)),
        hidden_size=hidden,
    )


def spread_r(r: int | list[int] | None, num_layers: int, schedule: str = "constant") -> list[int]:
    """The requested `r` of every layer, before any limit.

    Example:

    ```python
    >>> from turbo_hf.modeling.schedules import spread_r
    >>> spread_r(4, 3, "decreasing")
    [8, 4, 0]
    ```
    """
    if r is None:
        return [0] * num_layers
    if isinstance(r, list):
        if len(r) != num_layers:
            raise ValueError(
                f"`r` has {len(r)} entries but the encoder has {num_layers} layers: give one per layer."
            )
        return list(r)
    if schedule == "decreasing":
        if num_layers == 1:
            return [r]
        return [round(2 * r * (num_layers - 1 - i) / (num_layers - 1)) for i in range(num_layers)]
    return [r] * num_layers


def clamp_schedule(requested: list[int], num_tokens: int, min_tokens: int, protect_first: bool) -> list[int]:
    """Limit each layer's `r` by the bipartite split and by `min_tokens`, following the token count."""
    resolved = []
    tokens = num_tokens
    for r in requested:
        allowed = min(r, max_reduction(tokens, protect_first), max(0, tokens - min_tokens))
        resolved.append(allowed)
        tokens -= allowed
    return resolved


def token_counts(schedule: list[int], num_tokens: int) -> list[int]:
    """Tokens entering each layer, plus the final count (length `len(schedule) + 1`)."""
    counts = [num_tokens]
    for r in schedule:
        counts.append(counts[-1] - r)
    return counts


def schedule_macs(schedule: list[int], num_tokens: int, cost: LayerCost) -> int:
    """Encoder MACs when layer i attends over its input and runs its MLP after removing `schedule[i]`."""
    counts = token_counts(schedule, num_tokens)
    return sum(cost.macs(counts[i], counts[i + 1]) for i in range(len(schedule)))


def flops_fraction(schedule: list[int], num_tokens: int, cost: LayerCost) -> float:
    """Fraction of the stock encoder's FLOPs that a schedule keeps."""
    stock = schedule_macs([0] * len(schedule), num_tokens, cost)
    return schedule_macs(schedule, num_tokens, cost) / stock


def resolve_schedule(
    *,
    r: int | list[int] | None,
    flops_ratio: float | None,
    schedule: str,
    min_tokens: int,
    num_layers: int,
    num_tokens: int,
    cost: LayerCost,
    protect_first: bool = True,
) -> list[int]:
    """The `r` of every layer for an encoder and an input length.

    With `flops_ratio`, the smallest integer `r` (spread by `schedule`) whose schedule keeps at most that
    fraction of the stock FLOPs is chosen; if no schedule reaches it, the strongest one is used.

    Example:

    ```python
    >>> from turbo_hf.modeling.schedules import LayerCost, resolve_schedule
    >>> cost = LayerCost(attention_per_token=4 * 64 * 64, mlp_per_token=8 * 64 * 64, hidden_size=64)
    >>> resolve_schedule(r=None, flops_ratio=0.6, schedule="constant", min_tokens=0,
    ...                  num_layers=4, num_tokens=65, cost=cost)
    [12, 12, 12, 12]
    ```
    """
    if flops_ratio is None:
        return clamp_schedule(spread_r(r, num_layers, schedule), num_tokens, min_tokens, protect_first)
    best: list[int] = []
    for candidate in range(num_tokens):
        resolved = clamp_schedule(spread_r(candidate, num_layers, schedule), num_tokens, min_tokens, protect_first)
        if resolved == best:
            break
        best = resolved
        if flops_fraction(resolved, num_tokens, cost) <= flops_ratio:
            break
    return best


def shortfall(request: dict, resolved: list[int]) -> str | None:
    """Why a resolved schedule falls short of the request (a sentence for a warning), or None when it does not.

    Args:
        request: the keyword arguments `resolved` came from (those of `resolve_schedule`).
        resolved: what `resolve_schedule(**request)` returned.

    Example:

    ```python
    >>> from turbo_hf.modeling.schedules import LayerCost, resolve_schedule, shortfall
    >>> cost = LayerCost(attention_per_token=4, mlp_per_token=8, hidden_size=1)
    >>> request = dict(r=8, flops_ratio=None, schedule="constant", min_tokens=0, num_layers=2, num_tokens=9,
    ...                cost=cost)
    >>> reason = shortfall(request, resolve_schedule(**request))
    >>> reason.endswith("at most [4, 2] can go (half of the tokens per layer at most, [CLS] kept): 3 tokens remain.")
    True
    ```
    """
    r, flops_ratio, min_tokens = request["r"], request["flops_ratio"], request["min_tokens"]
    num_layers, num_tokens = request["num_layers"], request["num_tokens"]
    left = token_counts(resolved, num_tokens)[-1]
    limits = "half of the tokens per layer at most" + (", [CLS] kept" if request.get("protect_first", True) else "")
    limits += f", min_tokens={min_tokens}" if min_tokens else ""
    if flops_ratio is None:
        requested = spread_r(r, num_layers, request["schedule"])
        if requested == resolved:
            return None
        return (
            f"`r={r!r}` asks for {requested} tokens removed per layer from {num_tokens} tokens in {num_layers} layers; "
            f"at most {resolved} can go ({limits}): {left} tokens remain."
        )
    kept = flops_fraction(resolved, num_tokens, request["cost"])
    if kept <= flops_ratio + 1e-9:
        return None
    return (
        f"`flops_ratio={flops_ratio}` cannot be met for {num_tokens} tokens in {num_layers} layers ({limits}): the "
        f"strongest schedule {resolved} keeps {kept:.3f} of the FLOPs, {left} tokens remain."
    )


__all__ = [
    "LayerCost",
    "clamp_schedule",
    "flops_fraction",
    "layer_cost",
    "resolve_schedule",
    "schedule_macs",
    "shortfall",
    "spread_r",
    "token_counts",
]
