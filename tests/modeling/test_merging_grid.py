"""The strided bipartite split over a latent grid: one destination per cell, sources merge into destinations only,
`r` sources leave, priorities as in the merge core, refusals."""

import pytest
import torch

from turbo_hf.modeling.merging import merge_tokens, unmerge
from turbo_hf.modeling.merging_grid import cell_offsets, grid_destinations, grid_plan


def test_one_destination_per_whole_cell_at_its_offset():
    offsets = torch.tensor([[0, 1, 2, 3]])
    assert grid_destinations(4, 4, (2, 2), offsets).tolist() == [[0, 3, 12, 15]]
    # a 5 x 3 grid with 2 x 2 cells: two whole cells; the last row and column hold sources only
    assert grid_destinations(5, 3, (2, 2), torch.zeros(1, 2, dtype=torch.long)).tolist() == [[0, 6]]
    assert grid_destinations(2, 6, (3, 2), torch.tensor([[5, 0]])).tolist() == [[8, 3]]


def test_cell_offsets_are_seeded_per_row():
    assert cell_offsets(6, (2, 2), None).tolist() == [[0] * 6]
    draws = cell_offsets(50, (2, 2), [1, 2, 1])
    assert draws.shape == (3, 50) and torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])
    assert int(draws.min()) >= 0 and int(draws.max()) == 3


@pytest.mark.parametrize("mode", ["tome", "turbo", "semantic", "random"])
def test_sources_merge_into_destinations_and_unmerge_restores_the_grid(mode):
    tokens = torch.randn(2, 36, 8)
    semantic = torch.rand(2, 36).softmax(-1)
    plan = grid_plan(tokens, 20, 6, 6, (2, 2), mode=mode, semantic=semantic, alpha=1.0, seeds=[4, 5])
    destinations = set(grid_destinations(6, 6, (2, 2), torch.zeros(1, 9, dtype=torch.long))[0].tolist())
    assert plan.keep_idx.shape == (2, 16) and plan.src_idx.shape == (2, 20)
    assert set(plan.dst_idx.flatten().tolist()) <= destinations
    assert not destinations & set(plan.src_idx.flatten().tolist())
    merged, size = merge_tokens(tokens, torch.ones(2, 36, 1), plan)
    assert torch.equal(size.sum(1), torch.full((2, 1), 36.0))
    restored = unmerge(merged, plan.new_index)
    kept = plan.keep_idx[:, :, None].expand(-1, -1, 8)
    untouched = ~torch.isin(plan.keep_idx, plan.dst_idx)
    assert torch.equal(restored.gather(1, kept)[untouched], tokens.gather(1, kept)[untouched])


def test_priorities_follow_the_information_degree():
    tokens = torch.randn(1, 16, 4)
    by_redundancy = grid_plan(tokens, 3, 4, 4, mode="tome")
    assert torch.equal(grid_plan(tokens, 3, 4, 4, mode="turbo", semantic=None).src_idx, by_redundancy.src_idx)
    semantic = torch.zeros(1, 16)
    semantic[0, by_redundancy.src_idx[0]] = 1.0  # the most redundant sources are the most attended
    assert not set(grid_plan(tokens, 3, 4, 4, mode="semantic", semantic=semantic).src_idx[0].tolist()) & set(
        by_redundancy.src_idx[0].tolist())


def test_refusals():
    with pytest.raises(ValueError, match=r"`r` must be in \[0, 12\] for a 4 x 4 grid with 2 x 2 cells, got 13"):
        grid_plan(torch.randn(1, 16, 4), 13, 4, 4)
    with pytest.raises(ValueError, match="a 4 x 5 grid has 20 tokens, got 16"):
        grid_plan(torch.randn(1, 16, 4), 2, 4, 5)
    with pytest.raises(ValueError, match=r"`mode` must be one of \['turbo', 'tome', 'semantic', 'random'\]"):
        grid_plan(torch.randn(1, 16, 4), 2, 4, 4, mode="fast")
    with pytest.raises(ValueError, match="needs one seed per row"):
        grid_plan(torch.randn(1, 16, 4), 2, 4, 4, mode="random")
