"""Tests of per-layer schedules and FLOP budgets (`turbo_hf.modeling.schedules`)."""

from __future__ import annotations

import pytest

from turbo_hf.modeling.merging import max_reduction
from turbo_hf.modeling.schedules import (
    LayerCost,
    clamp_schedule,
    flops_fraction,
    layer_cost,
    resolve_schedule,
    schedule_macs,
    spread_r,
    token_counts,
)

# A ViT-like layer of width 64: q, k, v, o projections and a 4x MLP.
COST = LayerCost(attention_per_token=4 * 64 * 64, mlp_per_token=8 * 64 * 64, hidden_size=64)

# ---------------------------------------------------------------------------------------------- spread_r


def test_spread_r_constant():
    assert spread_r(5, 4) == [5, 5, 5, 5]
    assert spread_r(5, 4, "constant") == [5, 5, 5, 5]
    assert spread_r(0, 3) == [0, 0, 0]
    assert spread_r(None, 3) == [0, 0, 0]
    assert spread_r(None, 3, "decreasing") == [0, 0, 0]


def test_spread_r_decreasing_examples():
    assert spread_r(4, 3, "decreasing") == [8, 4, 0]
    assert spread_r(3, 4, "decreasing") == [6, 4, 2, 0]
    assert spread_r(5, 1, "decreasing") == [5]


@pytest.mark.parametrize("num_layers", [2, 3, 4, 7, 12, 24])
@pytest.mark.parametrize("r", [0, 1, 2, 5, 8, 13])
def test_spread_r_decreasing_properties(r, num_layers):
    schedule = spread_r(r, num_layers, "decreasing")
    assert len(schedule) == num_layers
    assert all(isinstance(value, int) for value in schedule)
    assert schedule[0] == 2 * r
    assert schedule[-1] == 0
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))
    # The same total as a constant r, up to rounding.
    assert abs(sum(schedule) - r * num_layers) <= num_layers / 2


def test_spread_r_list():
    assert spread_r([3, 2, 1], 3) == [3, 2, 1]
    values = [1, 0, 4]
    out = spread_r(values, 3)
    assert out == values and out is not values  # a copy
    with pytest.raises(ValueError, match="`r`"):
        spread_r([1, 2], 3)
    with pytest.raises(ValueError, match="`r`"):
        spread_r([1, 2, 3, 4], 3)


# ---------------------------------------------------------------------------------- clamp_schedule, counts


def test_clamp_schedule_bipartite_limit_by_hand():
    # 10 tokens, first protected: at most 4 leave (5 even minus [CLS]), then 2 of 6, 1 of 4, 1 of 3, 0 of 2.
    assert clamp_schedule([100] * 5, 10, 0, True) == [4, 2, 1, 1, 0]
    # Without protection: 5 of 10, 2 of 5 (min(3, 2)), 1 of 3, 1 of 2, 0 of 1.
    assert clamp_schedule([100] * 5, 10, 0, False) == [5, 2, 1, 1, 0]
    # Requests below the limit pass through unchanged.
    assert clamp_schedule([2, 1, 3], 20, 0, True) == [2, 1, 3]


def test_clamp_schedule_min_tokens_by_hand():
    assert clamp_schedule([4, 4, 4, 4], 20, 10, True) == [4, 4, 2, 0]
    assert clamp_schedule([4, 4, 4], 8, 8, True) == [0, 0, 0]
    assert clamp_schedule([4, 4, 4], 5, 9, True) == [0, 0, 0]  # already below min_tokens: nothing leaves


@pytest.mark.parametrize("protect_first", [True, False])
@pytest.mark.parametrize("min_tokens", [0, 3, 17, 40])
@pytest.mark.parametrize("num_tokens", [5, 16, 50, 197])
def test_clamp_schedule_properties(num_tokens, min_tokens, protect_first):
    requested = [30, 7, 0, 12, 50, 3, 9, 100]
    resolved = clamp_schedule(requested, num_tokens, min_tokens, protect_first)
    counts = token_counts(resolved, num_tokens)
    assert len(resolved) == len(requested)
    assert len(counts) == len(resolved) + 1
    assert counts[0] == num_tokens
    for i, (want, got) in enumerate(zip(requested, resolved)):
        assert 0 <= got <= want
        assert got <= max_reduction(counts[i], protect_first)
        assert counts[i + 1] == counts[i] - got
        # Never goes below min_tokens (unless it started there).
        assert counts[i + 1] >= min(min_tokens, num_tokens)
        # Greedy: each layer takes all it may.
        assert got == min(want, max_reduction(counts[i], protect_first), max(0, counts[i] - min_tokens))


def test_token_counts():
    assert token_counts([], 7) == [7]
    assert token_counts([2, 0, 3], 10) == [10, 8, 8, 5]


# ---------------------------------------------------------------------------------------------------- costs


def test_layer_cost_macs_by_hand():
    cost = LayerCost(attention_per_token=10, mlp_per_token=20, hidden_size=3)
    # 5 * 10 + 2 * 5 * 5 * 3 + 4 * 20
    assert cost.macs(5, 4) == 50 + 150 + 80
    assert cost.macs(5, 5) == 50 + 150 + 100
    assert cost.macs(4, 2) == 40 + 96 + 40
    # counts [5, 4, 2]: layer 0 attends over 5 and runs its MLP on 4; layer 1 attends over 4, MLP on 2.
    assert schedule_macs([1, 2], 5, cost) == 280 + 176
    assert schedule_macs([0, 0], 5, cost) == 600
    assert schedule_macs([], 5, cost) == 0
    assert flops_fraction([1, 2], 5, cost) == pytest.approx(456 / 600)


def test_layer_cost_counts_linear_modules_of_stock_layers():
    from transformers import BlipVisionConfig, BlipTextConfig
    from transformers.models.blip.modeling_blip import BlipEncoderLayer
    from transformers.models.blip.modeling_blip_text import BlipTextLayer

    h, i = 16, 40
    vision = BlipEncoderLayer(BlipVisionConfig(hidden_size=h, intermediate_size=i, num_attention_heads=2))
    # fused qkv (h -> 3h) and the output projection; the width of the N^2 part is h, not 3h
    assert layer_cost(vision, "self_attn", "mlp") == LayerCost(4 * h * h, 2 * h * i, h)
    # a text layer whose cross-attention reads wider image tokens (24): counted, but the width is the text's
    text = BlipTextLayer(BlipTextConfig(hidden_size=h, intermediate_size=i, num_attention_heads=2, encoder_hidden_size=24,
                                        is_decoder=True), 0)
    cross = h * h + 2 * 24 * h + h * h
    assert layer_cost(text, ("attention", "crossattention"), ("intermediate", "output")) == LayerCost(
        4 * h * h + cross, 2 * h * i, h
    )


@pytest.mark.parametrize("num_layers", [1, 4, 12])
def test_flops_fraction_of_zero_schedule_is_one(num_layers):
    assert flops_fraction([0] * num_layers, 65, COST) == 1.0


def test_flops_fraction_decreases_with_r():
    fractions = [flops_fraction(clamp_schedule([r] * 4, 65, 0, True), 65, COST) for r in range(0, 12)]
    assert fractions[0] == 1.0
    assert all(a > b for a, b in zip(fractions, fractions[1:]))


# --------------------------------------------------------------------------------------------- resolve_schedule


def _kwargs(**overrides):
    kwargs = dict(r=None, flops_ratio=None, schedule="constant", min_tokens=0, num_layers=4, num_tokens=65, cost=COST)
    kwargs.update(overrides)
    return kwargs


def test_resolve_schedule_without_budget_is_clamped_spread():
    assert resolve_schedule(**_kwargs(r=10)) == [10, 10, 10, 10]
    assert resolve_schedule(**_kwargs(r=4, schedule="decreasing")) == spread_r(4, 4, "decreasing")
    assert resolve_schedule(**_kwargs(r=[1, 2, 3, 4])) == [1, 2, 3, 4]
    assert resolve_schedule(**_kwargs(r=None)) == [0, 0, 0, 0]
    assert resolve_schedule(**_kwargs(r=100)) == clamp_schedule([100] * 4, 65, 0, True)
    assert resolve_schedule(**_kwargs(r=20, min_tokens=40)) == [20, 5, 0, 0]
    with pytest.raises(ValueError, match="`r`"):
        resolve_schedule(**_kwargs(r=[1, 2]))


def test_resolve_schedule_worked_example():
    # The setting of resolve_schedule's docstring. Constant r keeps these fractions of the stock FLOPs:
    # r=10 -> 0.660, r=11 -> 0.627, r=12 -> 0.595, so a 0.6 budget needs r=12. (The docstring's
    # `[10, 10, 10, 10]` is wrong; see the report.)
    assert flops_fraction([11] * 4, 65, COST) == pytest.approx(0.62743, abs=1e-5)
    assert flops_fraction([12] * 4, 65, COST) == pytest.approx(0.59500, abs=1e-5)
    assert resolve_schedule(**_kwargs(flops_ratio=0.6)) == [12, 12, 12, 12]


@pytest.mark.parametrize("schedule", ["constant", "decreasing"])
@pytest.mark.parametrize("min_tokens", [0, 20])
@pytest.mark.parametrize("flops_ratio", [0.95, 0.8, 0.6, 0.45, 0.3])
def test_resolve_schedule_is_least_reduction_meeting_budget(flops_ratio, min_tokens, schedule):
    num_layers, num_tokens = 6, 97
    common = dict(
        schedule=schedule, min_tokens=min_tokens, num_layers=num_layers, num_tokens=num_tokens, cost=COST
    )
    chosen = resolve_schedule(r=None, flops_ratio=flops_ratio, **common)

    def for_r(r):
        return resolve_schedule(r=r, flops_ratio=None, **common)

    strongest = for_r(10**6)
    if flops_fraction(strongest, num_tokens, COST) > flops_ratio:
        assert chosen == strongest
        return
    assert flops_fraction(chosen, num_tokens, COST) <= flops_ratio
    # It is the schedule of some integer r, and the next smaller r misses the budget.
    matches = [r for r in range(num_tokens) if for_r(r) == chosen]
    assert matches
    r = matches[0]
    assert r >= 1
    assert flops_fraction(for_r(r - 1), num_tokens, COST) > flops_ratio


def test_resolve_schedule_budget_found_for_some_settings():
    # Guard for the test above: most of its cases really do reach the budget.
    chosen = resolve_schedule(**_kwargs(flops_ratio=0.5, num_layers=6, num_tokens=97))
    assert any(chosen)
    assert flops_fraction(chosen, 97, COST) <= 0.5


@pytest.mark.parametrize("schedule", ["constant", "decreasing"])
def test_resolve_schedule_full_budget_is_zero(schedule):
    assert resolve_schedule(**_kwargs(flops_ratio=1.0, schedule=schedule)) == [0, 0, 0, 0]
    assert resolve_schedule(**_kwargs(flops_ratio=1.0, schedule=schedule, num_layers=12, num_tokens=197)) == [0] * 12


@pytest.mark.parametrize("protect_first", [True, False])
@pytest.mark.parametrize("min_tokens", [0, 10, 40])
@pytest.mark.parametrize("schedule", ["constant", "decreasing"])
def test_resolve_schedule_unreachable_budget_gives_strongest(schedule, min_tokens, protect_first):
    common = dict(schedule=schedule, min_tokens=min_tokens, protect_first=protect_first)
    strongest = resolve_schedule(**_kwargs(r=10**6, **common))
    chosen = resolve_schedule(**_kwargs(flops_ratio=1e-6, **common))
    assert chosen == strongest
    assert any(chosen)
    assert flops_fraction(chosen, 65, COST) > 1e-6
