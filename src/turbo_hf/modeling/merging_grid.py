"""Turbo's merge plan over a 2-D latent grid, for image generation (Stable Diffusion's UNet).

The bipartite split of `merging.bipartite_plan` (even / odd positions) would put every destination in every other
column of a row-major grid; a UNet needs its destinations spread over the image. Here the grid of `height x width`
tokens (row-major) is cut into cells of `sx x sy` tokens: one token per whole cell is a destination (its top-left
one, or one at a given offset in the cell), every other token (the rest of each cell, and the rows and columns
that no whole cell covers) is a source. Each source's redundancy is its largest cosine similarity to the
destinations (its partner the argmax), and the `r` sources of highest priority merge into their partners.
The plan is a `merging.MergePlan` in spatial order, so `merging.merge_tokens` and `merging.unmerge` apply it.

Pure tensors, no model code; the matching runs in float32 whatever the dtype of the tokens.
"""

from __future__ import annotations

import torch

from .merging import MergePlan, information_degree, plan_from_pairs

GRID_MODES = ("turbo", "tome", "semantic", "random")


def grid_destinations(height: int, width: int, stride: tuple[int, int], offsets: torch.Tensor) -> torch.Tensor:
    """Positions (B, M) of the destination tokens: one per whole `stride = (sx, sy)` cell, at `offsets` (B, M),
    each in [0, sx * sy), read row-major inside the cell (0 is the top-left token).

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.modeling.merging_grid import grid_destinations
    >>> grid_destinations(4, 4, (2, 2), torch.zeros(1, 4, dtype=torch.long)).tolist()
    [[0, 2, 8, 10]]
    ```
    """
    sx, sy = stride
    rows = torch.arange(height // sy, device=offsets.device) * sy
    cols = torch.arange(width // sx, device=offsets.device) * sx
    corners = (rows[:, None] * width + cols[None, :]).flatten()
    return corners + (offsets // sx) * width + offsets % sx


def cell_offsets(cells: int, stride: tuple[int, int], seeds: list[int] | None, device=None) -> torch.Tensor:
    """Where each row's destinations sit in their cells, (B, cells): the top-left (0) without `seeds`, else one
    draw per cell from a generator seeded by the row's seed (so a row draws the same in any batch)."""
    count = stride[0] * stride[1]
    if seeds is None:
        return torch.zeros(1, cells, dtype=torch.long, device=device)
    draws = [torch.randint(count, (cells,), generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    return torch.stack(draws).to(device)


def grid_plan(
    tokens: torch.Tensor,
    r: int,
    height: int,
    width: int,
    stride: tuple[int, int] = (2, 2),
    *,
    offsets: torch.Tensor | None = None,
    mode: str = "tome",
    semantic: torch.Tensor | None = None,
    alpha: float = 0.0,
    alpha_scale: str = "length",
    seeds: list[int] | None = None,
) -> MergePlan:
    """Choose `r` source tokens of a latent grid to merge into their most similar destination.

    Args:
        tokens: (B, N, C) tokens of a row-major `height x width` grid; their cosine similarity is the redundancy.
        r: sources that merge (at most the number of sources).
        height, width: the grid; `stride`: `(sx, sy)`, the cell of one destination.
        offsets: (B or 1, M) position of each cell's destination in its cell (default: top-left).
        mode: `"turbo"` (information degree `R - alpha * A`), `"tome"` (redundancy `R`), `"semantic"` (the least
            semantic value first) or `"random"` (one priority per source position from each row's seed in
            `seeds`); `"turbo"` and `"semantic"` without `semantic` fall back to `R`.
        semantic: (B, N) semantic value of every token, or None.
        alpha, alpha_scale: as in `merging.information_degree` (the mean is taken over all tokens).

    Returns:
        A `MergePlan` in spatial order. Ties in priority go to the lower source position.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.modeling.merging_grid import grid_plan
    >>> plan = grid_plan(torch.randn(2, 16, 8), 6, 4, 4)
    >>> plan.keep_idx.shape, bool((plan.dst_idx % 2 == 0).all())
    (torch.Size([2, 10]), True)
    ```
    """
    if mode not in GRID_MODES:
        raise ValueError(f"`mode` must be one of {list(GRID_MODES)}, got {mode!r}.")
    batch, num_tokens, _ = tokens.shape
    if height * width != num_tokens:
        raise ValueError(f"a {height} x {width} grid has {height * width} tokens, got {num_tokens}.")
    cells = (height // stride[1]) * (width // stride[0])
    if not 0 <= r <= num_tokens - cells or (r and not cells):
        raise ValueError(f"`r` must be in [0, {num_tokens - cells if cells else 0}] for a {height} x {width} grid "
                         f"with {stride[0]} x {stride[1]} cells, got {r}.")
    device = tokens.device
    if offsets is None:
        offsets = torch.zeros(1, cells, dtype=torch.long, device=device)
    dst = grid_destinations(height, width, stride, offsets.to(device)).expand(batch, cells)
    is_dst = torch.zeros(batch, num_tokens, dtype=torch.long, device=device).scatter_(1, dst, 1)
    src = is_dst.argsort(dim=1, stable=True)[:, : num_tokens - cells]  # the other positions, ascending

    metric = tokens.detach().float()
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    gather = lambda index: metric.gather(1, index.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))  # noqa: E731
    redundancy, partner = torch.matmul(gather(src), gather(dst).transpose(-1, -2)).max(dim=-1)

    if mode == "random":
        if seeds is None:
            raise ValueError("`mode='random'` needs one seed per row (`seeds`).")
        draws = [torch.rand(src.shape[1], generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        priority = torch.stack(draws).to(device)
    elif semantic is None or mode == "tome":
        priority = redundancy
    else:
        semantic = semantic.detach().float()
        value = semantic.gather(1, src)
        if mode == "semantic":
            priority = -value
        else:
            priority = information_degree(redundancy, value, alpha, alpha_scale, semantic.mean(-1, keepdim=True))
    chosen = priority.argsort(dim=-1, descending=True, stable=True)[:, :r]
    return plan_from_pairs(src.gather(1, chosen), dst.gather(1, partner.gather(1, chosen)), num_tokens)


__all__ = ["GRID_MODES", "cell_offsets", "grid_destinations", "grid_plan"]
