"""Tests of the model-agnostic merge core (`turbo_hf.modeling.merging`)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from turbo_hf.modeling.merging import (
    MergePlan,
    bipartite_plan,
    information_degree,
    initial_source,
    key_metric,
    max_reduction,
    merge_tokens,
    proportional_bias,
    semantic_value,
    unmerge,
    update_source,
)


def _metric(batch: int, tokens: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, tokens, dim, generator=generator), dim=-1)


def _semantic(batch: int, tokens: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, generator=generator).softmax(dim=-1)


def _duplicate_metric(tokens: int, duplicates: dict[int, int], dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Random unit vectors where token `even` is an exact copy of token `odd` for each `even: odd` pair."""
    metric = _metric(1, tokens, dim, seed)
    for even, odd in duplicates.items():
        metric[0, even] = metric[0, odd]
    return metric


def _sorted(values: torch.Tensor) -> list[int]:
    return sorted(values.flatten().tolist())


# --------------------------------------------------------------------------------------------- bipartite_plan


@pytest.mark.parametrize("tokens", [9, 10])
@pytest.mark.parametrize("mode", ["tome", "turbo", "semantic", "random"])
def test_plan_shapes_and_positions(tokens, mode):
    batch, r = 3, 3
    metric = _metric(batch, tokens)
    plan = bipartite_plan(
        metric,
        r,
        mode=mode,
        semantic=_semantic(batch, tokens),
        alpha=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert isinstance(plan, MergePlan)
    assert plan.src_idx.shape == (batch, r)
    assert plan.dst_idx.shape == (batch, r)
    assert plan.keep_idx.shape == (batch, tokens - r)
    assert plan.new_index.shape == (batch, tokens)
    # Sources are even and never the protected first token; destinations are odd.
    assert bool((plan.src_idx % 2 == 0).all())
    assert bool((plan.src_idx != 0).all())
    assert bool((plan.dst_idx % 2 == 1).all())
    assert bool((plan.dst_idx < tokens).all())
    for row in range(batch):
        src = set(plan.src_idx[row].tolist())
        keep = plan.keep_idx[row].tolist()
        assert len(src) == r
        assert keep == sorted(keep)
        assert len(set(keep)) == len(keep)
        assert src.isdisjoint(keep)
        assert src | set(keep) == set(range(tokens))
        # new_index: kept tokens go to their rank among the kept, removed ones to their partner's slot.
        for new, old in enumerate(keep):
            assert plan.new_index[row, old].item() == new
        for s, d in zip(plan.src_idx[row].tolist(), plan.dst_idx[row].tolist()):
            assert plan.new_index[row, s].item() == plan.new_index[row, d].item()
        assert 0 in keep


def test_plan_r_zero_keeps_everything():
    metric = _metric(2, 7)
    plan = bipartite_plan(metric, 0, mode="tome")
    assert plan.src_idx.shape == (2, 0)
    assert plan.dst_idx.shape == (2, 0)
    assert torch.equal(plan.keep_idx, torch.arange(7).expand(2, 7))
    assert torch.equal(plan.new_index, torch.arange(7).expand(2, 7))


@pytest.mark.parametrize("protect_first", [True, False])
@pytest.mark.parametrize("tokens", [1, 2, 3, 8, 9])
def test_plan_r_above_max_reduction_raises(tokens, protect_first):
    limit = max_reduction(tokens, protect_first)
    metric = _metric(1, tokens)
    if tokens > 1:  # one token: the odd set is empty and even r=0 fails inside torch (reported)
        # The limit itself is allowed ...
        plan = bipartite_plan(metric, limit, mode="tome", protect_first=protect_first)
        assert plan.keep_idx.shape == (1, tokens - limit)
    # ... one more is not.
    with pytest.raises(ValueError, match="`r`"):
        bipartite_plan(metric, limit + 1, mode="tome", protect_first=protect_first)


def test_plan_negative_r_raises():
    with pytest.raises(ValueError, match="`r`"):
        bipartite_plan(_metric(1, 8), -1, mode="tome")


def test_max_reduction_values():
    assert max_reduction(9, True) == 4
    assert max_reduction(9, False) == 4
    assert max_reduction(10, True) == 4
    assert max_reduction(10, False) == 5
    assert max_reduction(2, True) == 0
    assert max_reduction(1, False) == 0
    assert max_reduction(0, False) == 0


def test_protect_first_false_lets_token_zero_go():
    metric = _duplicate_metric(8, {0: 1})
    plan = bipartite_plan(metric, 1, mode="tome", protect_first=False)
    assert plan.src_idx.tolist() == [[0]]
    assert plan.dst_idx.tolist() == [[1]]
    assert plan.keep_idx.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert plan.new_index[0, 0].item() == plan.new_index[0, 1].item() == 0

    # The same metric with the first token protected must remove something else.
    protected = bipartite_plan(metric, 1, mode="tome", protect_first=True)
    assert protected.src_idx[0, 0].item() != 0
    assert 0 in protected.keep_idx[0].tolist()


# --------------------------------------------------------------------------------------------- mode semantics


def test_tome_picks_most_redundant():
    # Tokens 2 and 6 are exact copies of 5 and 1; every other pair is far less similar.
    metric = _duplicate_metric(10, {2: 5, 6: 1})
    plan = bipartite_plan(metric, 2, mode="tome")
    pairs = sorted(zip(plan.src_idx[0].tolist(), plan.dst_idx[0].tolist()))
    assert pairs == [(2, 5), (6, 1)]
    # With r=1 the single choice is one of the two exact duplicates.
    one = bipartite_plan(metric, 1, mode="tome")
    assert one.src_idx[0, 0].item() in (2, 6)


def test_semantic_mode_removes_least_attended():
    tokens = 10
    metric = _metric(1, tokens)
    semantic = torch.full((1, tokens), 0.5)
    # Even candidates 2, 4, 6, 8 with distinct values; 8 and 4 are the least attended.
    semantic[0, 2], semantic[0, 4], semantic[0, 6], semantic[0, 8] = 0.30, 0.02, 0.40, 0.01
    semantic[0, 0] = 0.0  # the protected token has the lowest value of all and still stays
    plan = bipartite_plan(metric, 2, mode="semantic", semantic=semantic)
    assert _sorted(plan.src_idx) == [4, 8]
    assert plan.src_idx[0].tolist() == [8, 4]  # least attended first
    plan3 = bipartite_plan(metric, 3, mode="semantic", semantic=semantic)
    assert _sorted(plan3.src_idx) == [2, 4, 8]


def test_semantic_modes_need_semantic():
    metric = _metric(1, 8)
    for mode in ("turbo", "semantic"):
        with pytest.raises(ValueError, match="semantic"):
            bipartite_plan(metric, 2, mode=mode, semantic=None, alpha=1.0)


@pytest.mark.parametrize("alpha_scale", ["raw", "length", "rank", "zscore"])
@pytest.mark.parametrize("protect_first", [True, False])
def test_turbo_alpha_zero_equals_tome(alpha_scale, protect_first):
    metric = _metric(3, 17, seed=3)
    semantic = _semantic(3, 17, seed=4)
    turbo = bipartite_plan(
        metric, 5, mode="turbo", semantic=semantic, alpha=0.0, alpha_scale=alpha_scale, protect_first=protect_first
    )
    tome = bipartite_plan(metric, 5, mode="tome", protect_first=protect_first)
    for name in ("src_idx", "dst_idx", "keep_idx", "new_index"):
        assert torch.equal(getattr(turbo, name), getattr(tome, name)), name


@pytest.mark.parametrize("alpha_scale", ["raw", "length", "rank", "zscore"])
def test_turbo_large_alpha_matches_semantic(alpha_scale):
    batch, tokens, r = 3, 21, 6
    metric = _metric(batch, tokens, seed=5)
    semantic = _semantic(batch, tokens, seed=6)
    tome = bipartite_plan(metric, r, mode="tome")
    by_semantic = bipartite_plan(metric, r, mode="semantic", semantic=semantic)
    # The test is only meaningful when redundancy and semantic value disagree.
    assert not torch.equal(tome.src_idx.sort(dim=-1).values, by_semantic.src_idx.sort(dim=-1).values)
    turbo = bipartite_plan(metric, r, mode="turbo", semantic=semantic, alpha=1e4, alpha_scale=alpha_scale)
    assert torch.equal(turbo.src_idx, by_semantic.src_idx)
    assert torch.equal(turbo.dst_idx, by_semantic.dst_idx)
    assert torch.equal(turbo.keep_idx, by_semantic.keep_idx)


def test_turbo_small_alpha_breaks_redundancy_ties_by_semantic():
    # Two candidates are exact duplicates (R = 1 for both); the semantic term decides which one goes.
    metric = _duplicate_metric(10, {2: 5, 6: 1})
    semantic = torch.full((1, 10), 0.1)
    semantic[0, 2] = 0.3
    semantic[0, 6] = 0.01
    plan = bipartite_plan(metric, 1, mode="turbo", semantic=semantic, alpha=1e-3, alpha_scale="raw")
    assert plan.src_idx.tolist() == [[6]]
    semantic[0, 2], semantic[0, 6] = 0.01, 0.3
    plan = bipartite_plan(metric, 1, mode="turbo", semantic=semantic, alpha=1e-3, alpha_scale="raw")
    assert plan.src_idx.tolist() == [[2]]


def test_random_mode_reproducible_and_seed_dependent():
    metric = _metric(2, 33, seed=7)

    def plan_for(seed):
        return bipartite_plan(metric, 8, mode="random", generator=torch.Generator().manual_seed(seed))

    first, again, other = plan_for(123), plan_for(123), plan_for(456)
    assert torch.equal(first.src_idx, again.src_idx)
    assert torch.equal(first.keep_idx, again.keep_idx)
    assert not torch.equal(first.src_idx.sort(-1).values, other.src_idx.sort(-1).values)
    assert bool((first.src_idx != 0).all()) and bool((other.src_idx != 0).all())
    # Random ordering is independent of redundancy: it differs from ToMe here.
    tome = bipartite_plan(metric, 8, mode="tome")
    assert not torch.equal(first.src_idx.sort(-1).values, tome.src_idx.sort(-1).values)


# ---------------------------------------------------------------------------------------- information_degree

REDUNDANCY = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
SEMANTIC = torch.tensor([[0.1, 0.4, 0.2, 0.3]])


def test_information_degree_raw():
    out = information_degree(REDUNDANCY, SEMANTIC, 2.0, "raw")
    expected = torch.tensor([[0.9 - 0.2, 0.5 - 0.8, 0.7 - 0.4, 0.1 - 0.6]])
    torch.testing.assert_close(out, expected)


def test_information_degree_length():
    # Mean of SEMANTIC is 0.25 -> A' = A / 0.25 = [0.4, 1.6, 0.8, 1.2].
    out = information_degree(REDUNDANCY, SEMANTIC, 0.5, "length")
    expected = torch.tensor([[0.9 - 0.2, 0.5 - 0.8, 0.7 - 0.4, 0.1 - 0.6]])
    torch.testing.assert_close(out, expected)
    # An explicit mean (here 0.5) replaces the candidates' own mean.
    out = information_degree(REDUNDANCY, SEMANTIC, 0.5, "length", semantic_mean=torch.tensor([[0.5]]))
    expected = torch.tensor([[0.9 - 0.1, 0.5 - 0.4, 0.7 - 0.2, 0.1 - 0.3]])
    torch.testing.assert_close(out, expected)


def test_information_degree_rank():
    # Ranks of R: 0.9 -> 3, 0.5 -> 1, 0.7 -> 2, 0.1 -> 0; of A: 0.1 -> 0, 0.4 -> 3, 0.2 -> 1, 0.3 -> 2 (/3).
    out = information_degree(REDUNDANCY, SEMANTIC, 1.0, "rank")
    expected = torch.tensor([[3 / 3 - 0 / 3, 1 / 3 - 3 / 3, 2 / 3 - 1 / 3, 0 / 3 - 2 / 3]])
    torch.testing.assert_close(out, expected)


def test_information_degree_zscore():
    r_values, a_values = REDUNDANCY[0].tolist(), SEMANTIC[0].tolist()
    r_mean, r_std = statistics.mean(r_values), statistics.stdev(r_values)
    a_mean, a_std = statistics.mean(a_values), statistics.stdev(a_values)
    alpha = 0.7
    expected = torch.tensor(
        [[(rv - r_mean) / r_std - alpha * (av - a_mean) / a_std for rv, av in zip(r_values, a_values)]]
    )
    out = information_degree(REDUNDANCY, SEMANTIC, alpha, "zscore")
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("alpha_scale", ["raw", "length", "rank", "zscore"])
def test_information_degree_without_semantic_term(alpha_scale):
    assert torch.equal(information_degree(REDUNDANCY, None, 1.0, alpha_scale), REDUNDANCY)
    assert torch.equal(information_degree(REDUNDANCY, SEMANTIC, 0.0, alpha_scale), REDUNDANCY)


def test_information_degree_unknown_scale_raises():
    with pytest.raises(ValueError, match="alpha_scale"):
        information_degree(REDUNDANCY, SEMANTIC, 1.0, "softmax")


def test_turbo_plan_uses_information_degree():
    # Cross-check bipartite_plan's turbo priority against information_degree computed by hand ("raw").
    tokens, r, alpha = 12, 3, 5.0
    metric = _metric(1, tokens, seed=11)
    semantic = _semantic(1, tokens, seed=12)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
    redundancy = similarity.max(dim=-1).values
    priority = redundancy - alpha * semantic[:, ::2]
    priority[:, 0] = -float("inf")
    expected = (priority.topk(r, dim=-1).indices * 2).tolist()
    plan = bipartite_plan(metric, r, mode="turbo", semantic=semantic, alpha=alpha, alpha_scale="raw")
    assert plan.src_idx.tolist() == expected


def test_turbo_length_scale_uses_mean_over_all_non_protected_tokens():
    # "length" divides A by the mean semantic value of every token but the protected first one (both sets),
    # not just of the even candidates.
    tokens, r, alpha = 16, 4, 0.3
    metric = _metric(1, tokens, seed=24)
    semantic = torch.rand(1, tokens, generator=torch.Generator().manual_seed(25))
    semantic[:, 1::2] *= 6.0  # odd tokens draw far more attention: the two means differ a lot
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
    redundancy = similarity.max(dim=-1).values

    def expected(mean):
        priority = redundancy - alpha * semantic[:, ::2] / mean
        priority[:, 0] = -float("inf")
        return (priority.topk(r, dim=-1).indices * 2).tolist()

    all_mean = semantic[:, 1:].mean(dim=-1, keepdim=True)
    candidate_mean = semantic[:, 2::2].mean(dim=-1, keepdim=True)
    assert sorted(expected(all_mean)[0]) != sorted(expected(candidate_mean)[0])  # the check can tell them apart
    plan = bipartite_plan(metric, r, mode="turbo", semantic=semantic, alpha=alpha, alpha_scale="length")
    assert plan.src_idx.tolist() == expected(all_mean)


# --------------------------------------------------------------------------------------------- merge_tokens


def _hidden(batch: int, tokens: int, channels: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, tokens, channels, generator=torch.Generator().manual_seed(seed))


def test_merge_two_sources_into_one_destination():
    tokens = 10
    # Tokens 2 and 4 both copy token 3; token 8 copies token 7.
    metric = _duplicate_metric(tokens, {2: 3, 4: 3, 8: 7})
    plan = bipartite_plan(metric, 3, mode="tome")
    assert sorted(zip(plan.src_idx[0].tolist(), plan.dst_idx[0].tolist())) == [(2, 3), (4, 3), (8, 7)]
    assert plan.keep_idx.tolist() == [[0, 1, 3, 5, 6, 7, 9]]

    hidden = _hidden(1, tokens)
    size = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 6.0, 7.0, 1.0]]).unsqueeze(-1)
    merged, merged_size = merge_tokens(hidden, size, plan, "merge")
    assert merged.shape == (1, 7, 5)
    assert merged_size.shape == (1, 7, 1)
    assert merged_size.sum().item() == size.sum().item()
    assert merged_size[0, :, 0].tolist() == [1.0, 2.0, 3.0 + 4.0 + 5.0, 1.0, 2.0, 6.0 + 7.0, 1.0]

    h = hidden[0]
    expected_3 = (3.0 * h[2] + 4.0 * h[3] + 5.0 * h[4]) / 12.0
    expected_7 = (6.0 * h[7] + 7.0 * h[8]) / 13.0
    torch.testing.assert_close(merged[0, 2], expected_3)
    torch.testing.assert_close(merged[0, 5], expected_7)
    # Untouched tokens come through bit-identical.
    for new, old in [(0, 0), (1, 1), (3, 5), (4, 6), (6, 9)]:
        assert torch.equal(merged[0, new], h[old])


def test_prune_keeps_tokens_identical_and_drops_removed():
    tokens = 10
    metric = _duplicate_metric(tokens, {2: 3, 4: 3, 8: 7})
    plan = bipartite_plan(metric, 3, mode="tome")
    hidden = _hidden(1, tokens)
    size = torch.arange(1, tokens + 1, dtype=torch.float32).view(1, tokens, 1)
    pruned, pruned_size = merge_tokens(hidden, size, plan, "prune")
    keep = [0, 1, 3, 5, 6, 7, 9]
    assert torch.equal(pruned, hidden[:, keep])
    assert torch.equal(pruned_size, size[:, keep])
    for removed in (2, 4, 8):
        assert not any(torch.equal(hidden[0, removed], row) for row in pruned[0])


@pytest.mark.parametrize("reduction", ["merge", "prune"])
def test_merge_batched_random_properties(reduction):
    batch, tokens, r = 4, 15, 5
    metric = _metric(batch, tokens, seed=8)
    plan = bipartite_plan(metric, r, mode="tome")
    hidden = _hidden(batch, tokens, seed=9)
    size = torch.randint(1, 5, (batch, tokens, 1), generator=torch.Generator().manual_seed(10)).float()
    out, out_size = merge_tokens(hidden, size, plan, reduction)
    assert out.shape == (batch, tokens - r, 5)
    assert out_size.shape == (batch, tokens - r, 1)
    for row in range(batch):
        keep = plan.keep_idx[row].tolist()
        dsts = set(plan.dst_idx[row].tolist())
        if reduction == "merge":
            assert out_size[row].sum().item() == size[row].sum().item()
            # The size-weighted sum of all tokens is preserved by merging.
            torch.testing.assert_close((out[row] * out_size[row]).sum(0), (hidden[row] * size[row]).sum(0))
        else:
            assert torch.equal(out_size[row, :, 0], size[row, keep, 0])
        for new, old in enumerate(keep):
            if reduction == "prune" or old not in dsts:
                assert torch.equal(out[row, new], hidden[row, old])
            else:
                assert not torch.equal(out[row, new], hidden[row, old])


# ----------------------------------------------------------------------------------- update_source / unmerge


@pytest.mark.parametrize("reduction", ["merge", "prune"])
@pytest.mark.parametrize("mode", ["tome", "turbo"])
def test_successive_plans_unmerge(reduction, mode):
    batch, tokens = 3, 25
    generator = torch.Generator().manual_seed(13)
    hidden = torch.randn(batch, tokens, 6, generator=generator)
    size = torch.ones(batch, tokens, 1)
    source = initial_source(batch, tokens)
    for step, r in enumerate([5, 4, 3, 2]):
        metric = F.normalize(torch.randn(batch, hidden.shape[1], 6, generator=generator) + hidden, dim=-1)
        semantic = torch.randn(batch, hidden.shape[1], generator=generator).softmax(-1)
        plan = bipartite_plan(metric, r, mode=mode, semantic=semantic, alpha=1.0)
        previous_hidden = hidden
        hidden, size = merge_tokens(hidden, size, plan, reduction)
        previous_source = source
        source = update_source(source, plan)
        assert source.shape == (batch, tokens)
        # Every original token follows its current token to the new position.
        assert torch.equal(source, plan.new_index.gather(1, previous_source))
        assert int(source.max()) < hidden.shape[1]
        del previous_hidden
    assert hidden.shape[1] == tokens - 14
    restored = unmerge(hidden, source)
    assert restored.shape == (batch, tokens, 6)
    for row in range(batch):
        assert torch.equal(restored[row], hidden[row, source[row]])
        counts = torch.bincount(source[row], minlength=hidden.shape[1])
        if reduction == "merge":
            assert counts.tolist() == size[row, :, 0].long().tolist()
        else:
            # Pruned tokens still point at their partner, but sizes are not transferred.
            assert int(counts.sum()) == tokens
            assert bool((size[row] == 1).all())
    # The protected first token never moves.
    assert bool((source[:, 0] == 0).all())


def test_unmerge_of_never_merged_is_identity():
    hidden = _hidden(2, 7)
    source = initial_source(2, 7)
    assert source.tolist() == [list(range(7))] * 2
    assert torch.equal(unmerge(hidden, source), hidden)
    # r = 0 keeps the source map unchanged.
    plan = bipartite_plan(_metric(2, 7), 0, mode="tome")
    assert torch.equal(update_source(source, plan), source)


def test_unmerge_copies_merged_token_to_every_position():
    metric = _duplicate_metric(6, {2: 3, 4: 3})
    plan = bipartite_plan(metric, 2, mode="tome")
    hidden = _hidden(1, 6)
    merged, _ = merge_tokens(hidden, torch.ones(1, 6, 1), plan)
    source = update_source(initial_source(1, 6), plan)
    assert source.tolist() == [[0, 1, 2, 2, 2, 3]]
    restored = unmerge(merged, source)
    for position in (2, 3, 4):
        assert torch.equal(restored[0, position], merged[0, 2])


# --------------------------------------------------------------------------------- semantic value / metrics


@pytest.mark.parametrize("with_bias", [False, True])
def test_semantic_value_matches_full_attention_row(with_bias):
    batch, heads, tokens, head_dim = 2, 3, 9, 4
    generator = torch.Generator().manual_seed(14)
    queries = torch.randn(batch, heads, tokens, head_dim, generator=generator)
    keys = torch.randn(batch, heads, tokens, head_dim, generator=generator)
    scaling = head_dim**-0.5
    bias = None
    logits = queries @ keys.transpose(-1, -2) * scaling
    if with_bias:
        size = torch.randint(1, 6, (batch, tokens, 1), generator=generator).float()
        bias = proportional_bias(size, torch.float32)
        logits = logits + bias
    reference = torch.softmax(logits, dim=-1)[:, :, 0].mean(dim=1)
    out = semantic_value(queries[:, :, :1], keys, scaling, bias)
    assert out.shape == (batch, tokens)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(out.sum(-1), torch.ones(batch))


def test_semantic_value_bias_changes_result():
    generator = torch.Generator().manual_seed(15)
    query = torch.randn(1, 2, 1, 4, generator=generator)
    keys = torch.randn(1, 2, 5, 4, generator=generator)
    size = torch.tensor([[[1.0], [1.0], [4.0], [1.0], [1.0]]])
    plain = semantic_value(query, keys, 0.5)
    biased = semantic_value(query, keys, 0.5, proportional_bias(size, torch.float32))
    assert biased[0, 2] > plain[0, 2]


def test_proportional_bias():
    size = torch.tensor([[[1.0], [2.0], [4.0]], [[3.0], [1.0], [8.0]]])
    bias = proportional_bias(size, torch.float32)
    assert bias.shape == (2, 1, 1, 3)
    assert bias.dtype == torch.float32
    torch.testing.assert_close(bias[:, 0, 0], torch.log(size[..., 0]))
    assert bias[0, 0, 0, 0].item() == 0.0
    assert proportional_bias(size, torch.float16).dtype == torch.float16


def test_key_metric_unit_norm():
    keys = torch.randn(2, 4, 11, 8, generator=torch.Generator().manual_seed(16)) * 7.0
    metric = key_metric(keys)
    assert metric.shape == (2, 11, 8)
    torch.testing.assert_close(metric.norm(dim=-1), torch.ones(2, 11))
    # It is the direction of the head-averaged key.
    mean = keys.mean(dim=1)
    torch.testing.assert_close(metric, mean / mean.norm(dim=-1, keepdim=True))


# ------------------------------------------------------------------------------------------- batch invariance


@pytest.mark.parametrize("mode", ["tome", "turbo", "semantic"])
@pytest.mark.parametrize("alpha_scale", ["length", "rank", "zscore"])
def test_batched_plan_equals_per_sample(mode, alpha_scale):
    batch, tokens, r = 3, 19, 6
    metric = _metric(batch, tokens, seed=17)
    semantic = _semantic(batch, tokens, seed=18)
    kwargs = dict(mode=mode, alpha=0.8, alpha_scale=alpha_scale)
    batched = bipartite_plan(metric, r, semantic=semantic, **kwargs)
    for row in range(batch):
        single = bipartite_plan(metric[row : row + 1], r, semantic=semantic[row : row + 1], **kwargs)
        for name in ("src_idx", "dst_idx", "keep_idx", "new_index"):
            assert torch.equal(getattr(batched, name)[row : row + 1], getattr(single, name)), (row, name)


# ------------------------------------------------------------------------------- low precision (bf16 / fp16)


def _near_duplicate_keys(dtype: torch.dtype, seed: int = 21) -> torch.Tensor:
    """Keys (1, 2, 33, 16) that all point almost the same way: cosine similarities of about 0.999, closer
    together than bf16/fp16 can tell apart near 1 (steps of 2**-8 / 2**-11)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 2, 1, 16, generator=generator)
    noise = torch.randn(1, 2, 33, 16, generator=generator)
    return (base + 0.03 * noise).to(dtype)


def _plan_in_model_dtype(keys: torch.Tensor, r: int) -> MergePlan:
    """What the merge core computed before it matched in float32: metric, similarity, max, top-r in the
    dtype of the keys."""
    metric = keys.mean(dim=1)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    similarity = torch.matmul(metric[:, ::2], metric[:, 1::2].transpose(-1, -2))
    redundancy, partner = similarity.max(dim=-1)
    redundancy[:, 0] = -math.inf
    chosen = redundancy.topk(r, dim=-1).indices
    return MergePlan(chosen * 2, partner.gather(1, chosen) * 2 + 1, chosen, chosen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keys_are_matched_in_float32(dtype):
    keys = _near_duplicate_keys(dtype)
    r = 8
    reference = bipartite_plan(key_metric(keys.float()), r, mode="tome")
    # the premise: matching in the model dtype picks other partners and another merge set than float32
    rounded = _plan_in_model_dtype(keys, r)
    reference_partner = dict(zip(reference.src_idx[0].tolist(), reference.dst_idx[0].tolist()))
    rounded_partner = dict(zip(rounded.src_idx[0].tolist(), rounded.dst_idx[0].tolist()))
    assert set(rounded_partner) != set(reference_partner)
    assert any(rounded_partner[i] != reference_partner[i] for i in set(rounded_partner) & set(reference_partner))
    # the core now matches in float32, whatever the dtype of the keys or of a metric handed to it
    assert key_metric(keys).dtype == torch.float32
    plan = bipartite_plan(key_metric(keys), r, mode="tome")
    for name in ("src_idx", "dst_idx", "keep_idx", "new_index"):
        assert torch.equal(getattr(plan, name), getattr(reference, name)), name
    semantic = torch.randn(1, 33, generator=torch.Generator().manual_seed(3)).softmax(-1)
    turbo = bipartite_plan(key_metric(keys), r, mode="turbo", semantic=semantic.to(dtype), alpha=0.02)
    turbo_reference = bipartite_plan(key_metric(keys.float()), r, mode="turbo", semantic=semantic.to(dtype).float(),
                                     alpha=0.02)
    assert torch.equal(turbo.src_idx, turbo_reference.src_idx) and torch.equal(turbo.dst_idx, turbo_reference.dst_idx)


def test_low_precision_metric_is_upcast_inside_bipartite_plan():
    keys = _near_duplicate_keys(torch.bfloat16)
    metric32 = key_metric(keys.float())
    # a caller that hands a bf16 metric gets the plan of that metric's values in float32
    metric16 = metric32.to(torch.bfloat16)
    assert torch.equal(
        bipartite_plan(metric16, 8, mode="tome").src_idx, bipartite_plan(metric16.float(), 8, mode="tome").src_idx
    )


# ------------------------------------------------------------------------------------------------ tie rule


@pytest.mark.parametrize("token_order", ["spatial", "tome"])
def test_equal_priorities_merge_the_lower_position_first(token_order):
    # every token is the same vector: all redundancies are 1, the lowest candidate positions go first
    metric = F.normalize(torch.ones(2, 15, 4), dim=-1)
    plan = bipartite_plan(metric, 4, mode="tome", token_order=token_order)
    assert plan.src_idx.tolist() == [[2, 4, 6, 8]] * 2
    random_ties = bipartite_plan(metric, 3, mode="semantic", semantic=torch.full((2, 15), 0.1),
                                 token_order=token_order)
    assert random_ties.src_idx.tolist() == [[2, 4, 6]] * 2


def test_spatial_order_keeps_ascending_positions_over_steps():
    batch, tokens = 3, 31
    generator = torch.Generator().manual_seed(4)
    source = initial_source(batch, tokens)
    order = torch.arange(tokens).expand(batch, tokens)  # original position of each current token
    for r in (6, 5, 4):
        plan = bipartite_plan(_metric(batch, order.shape[1], seed=int(torch.randint(99, (1,), generator=generator))),
                              r, mode="tome", token_order="spatial")
        assert torch.equal(plan.keep_idx, plan.keep_idx.sort(dim=1).values)
        order = order.gather(1, plan.keep_idx)
        source = update_source(source, plan)
        assert torch.equal(order, order.sort(dim=1).values)
    assert torch.equal(source.gather(1, order), torch.arange(order.shape[1]).expand_as(order))


# --------------------------------------------------------------------------------------------- random mode


def test_random_mode_is_batch_invariant():
    batch, tokens, r = 4, 21, 6
    metric = _metric(batch, tokens, seed=30)
    batched = bipartite_plan(metric, r, mode="random", generator=torch.Generator().manual_seed(5))
    for row in range(batch):
        single = bipartite_plan(metric[row : row + 1], r, mode="random", generator=torch.Generator().manual_seed(5))
        for name in ("src_idx", "dst_idx", "keep_idx", "new_index"):
            assert torch.equal(getattr(batched, name)[row : row + 1], getattr(single, name)), (row, name)
    # one draw per candidate position, shared by the rows: every row removes the same positions
    assert all(batched.src_idx[row].tolist() == batched.src_idx[0].tolist() for row in range(batch))


# ------------------------------------------------------------------------------------------ ToMe token order


@pytest.mark.parametrize("protect_first", [True, False])
def test_tome_order_layout(protect_first):
    batch, tokens, r = 2, 17, 5
    metric = _metric(batch, tokens, seed=40)
    spatial = bipartite_plan(metric, r, mode="tome", protect_first=protect_first)
    tome = bipartite_plan(metric, r, mode="tome", protect_first=protect_first, token_order="tome")
    # the same merge decisions, another output order
    assert torch.equal(spatial.src_idx, tome.src_idx) and torch.equal(spatial.dst_idx, tome.dst_idx)
    assert torch.equal(spatial.keep_idx, tome.keep_idx.sort(dim=1).values)
    for row in range(batch):
        kept_a = [p for p in tome.keep_idx[row].tolist() if p % 2 == 0]
        assert tome.keep_idx[row].tolist() == kept_a + list(range(1, tokens, 2))
        if protect_first:
            assert kept_a == sorted(kept_a) and kept_a[0] == 0
        else:  # ToMe without a class token keeps its unmerged A tokens in descending score order
            redundancy = (metric[row, ::2] @ metric[row, 1::2].T).max(dim=-1).values
            scores = [float(redundancy[p // 2]) for p in kept_a]
            assert scores == sorted(scores, reverse=True)
        # new_index sends every kept token to its output slot and every removed one to its partner's
        new_index = tome.new_index[row]
        assert new_index[tome.keep_idx[row]].tolist() == list(range(tokens - r))
        assert torch.equal(new_index[tome.src_idx[row]], new_index[tome.dst_idx[row]])
    hidden = _hidden(batch, tokens)
    size = torch.ones(batch, tokens, 1)
    merged_tome, size_tome = merge_tokens(hidden, size, tome)
    merged_spatial, size_spatial = merge_tokens(hidden, size, spatial)
    assert torch.equal(unmerge(merged_tome, tome.new_index), unmerge(merged_spatial, spatial.new_index))
    assert torch.equal(unmerge(size_tome, tome.new_index), unmerge(size_spatial, spatial.new_index))


def test_tome_order_unmerges_over_successive_steps():
    batch, tokens = 2, 29
    generator = torch.Generator().manual_seed(41)
    hidden = torch.randn(batch, tokens, 6, generator=generator)
    size, source = torch.ones(batch, tokens, 1), initial_source(batch, tokens)
    original = hidden
    for r in (6, 5, 4):
        metric = F.normalize(hidden + 0.1 * torch.randn(hidden.shape, generator=generator), dim=-1)
        plan = bipartite_plan(metric, r, mode="tome", token_order="tome")
        hidden, size = merge_tokens(hidden, size, plan, "prune")
        source = update_source(source, plan)
    restored = unmerge(hidden, source)
    # pruned: every token that is still there holds itself, so the restored grid equals the input there
    held = torch.zeros(batch, tokens, dtype=torch.bool)
    for row in range(batch):
        for out_pos in range(hidden.shape[1]):
            matches = (original[row] == hidden[row, out_pos]).all(-1).nonzero().flatten().tolist()
            assert len(matches) == 1 and source[row, matches[0]] == out_pos
            held[row, matches[0]] = True
    assert torch.equal(restored[held], original[held])
    assert bool((source[:, 0] == 0).all())


@pytest.mark.parametrize(
    "constraint",
    [dict(token_mask=torch.ones(1, 9, dtype=torch.bool)), dict(protected=torch.zeros(1, 9, dtype=torch.bool)),
     dict(causal=True)],
)
def test_tome_order_is_refused_where_order_matters(constraint):
    with pytest.raises(ValueError, match="token_order='tome'"):
        bipartite_plan(_metric(1, 9), 2, mode="tome", token_order="tome", **constraint)
    with pytest.raises(ValueError, match="`token_order`"):
        bipartite_plan(_metric(1, 9), 2, token_order="bogus")


# ------------------------------------------------------------------------------- text constraints (causal, mask)


def _padded_mask() -> torch.Tensor:
    token_mask = torch.ones(4, 12, dtype=torch.bool)
    token_mask[1, 7:] = False
    token_mask[3, 4:] = False
    return token_mask


def test_causal_merges_only_go_forward_and_padding_pairs_only_with_padding():
    metric, token_mask = _metric(4, 12, seed=5), _padded_mask()
    plan = bipartite_plan(metric, 4, mode="tome", protect_first=False, causal=True, token_mask=token_mask)
    assert plan.src_idx.shape == plan.dst_idx.shape == (4, 4)
    assert torch.all(plan.dst_idx > plan.src_idx)
    assert torch.equal(token_mask.gather(1, plan.src_idx), token_mask.gather(1, plan.dst_idx))


@pytest.mark.parametrize("row", [1, 3])
def test_a_padded_row_merges_its_real_tokens_as_it_would_alone(row):
    metric, token_mask = _metric(4, 12, seed=5), _padded_mask()
    plan = bipartite_plan(metric, 4, mode="tome", protect_first=False, causal=True, token_mask=token_mask)
    length = int(token_mask[row].sum())
    real = [(s, d) for s, d in zip(plan.src_idx[row].tolist(), plan.dst_idx[row].tolist()) if s < length]
    alone = bipartite_plan(metric[row : row + 1, :length], len(real), mode="tome", protect_first=False, causal=True)
    assert real and sorted(real) == sorted(zip(alone.src_idx[0].tolist(), alone.dst_idx[0].tolist()))
    # padding leaves only after every real candidate: a real token with a later real partner leaves
    assert len(real) == len(range(0, length - 1, 2))
