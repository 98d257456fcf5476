"""The model-agnostic core of Turbo: information degree, bipartite matching, merging and unmerging.

Everything here works on plain tensors and knows nothing about any model family:

- `metric` (B, N, D): one key vector per token, used for redundancy;
- `semantic` (B, N): the semantic value of each token (attention it receives from a summary query);
- `size` (B, N, 1): how many original tokens each current token stands for;
- `source` (B, N0): for each original token, the index of the current token that holds it.

Matching runs in float32 whatever the model dtype (`key_metric`, `bipartite_plan`, `semantic_value`): in bf16
or fp16, cosine similarities near 1 round to a few values, and merge decisions made on them follow the rounding.

Token order: by default (`token_order="spatial"`) the output of a merge lists the kept tokens in their original
relative order; `token_order="tome"` emits ToMe's order instead (kept tokens of set A, then all of set B).
Ties in merge priority are broken by position: on equal priority the lower position merges first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


# below every real candidate's information degree, above the blocked ones (-inf)
_FILLER_PRIORITY = -1e9

TOKEN_ORDERS = ("spatial", "tome")


@dataclass
class MergePlan:
    """Which tokens leave and where they go, for one reduction step.

    Attributes:
        src_idx: (B, r) positions of the removed tokens.
        dst_idx: (B, r) positions of the tokens they merge into.
        keep_idx: (B, N - r) positions of the kept tokens in their output order: ascending with
            `token_order="spatial"`; ToMe's order (kept set-A tokens, then every set-B token) with `"tome"`.
        new_index: (B, N) for every current token, its position after the step (a removed token gets the
            position of its partner).
    """

    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    keep_idx: torch.Tensor
    new_index: torch.Tensor


def key_metric(keys: torch.Tensor) -> torch.Tensor:
    """Matching metric from per-head keys (B, H, N, Dh): the head-averaged key, L2-normalised (B, N, Dh).

    Computed in float32 whatever the dtype of `keys`, so that bf16/fp16 models match tokens as in float32.
    """
    metric = keys.float().mean(dim=1)
    return metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def semantic_value(
    query: torch.Tensor, keys: torch.Tensor, scaling: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention that one summary query pays to every token, averaged over heads.

    Computes a single attention row, O(N * d), with no N x N matrix.

    Args:
        query: (B, H, 1, Dh) the summary query (the [CLS] query, or a size-weighted mean query).
        keys: (B, H, N, Dh).
        scaling: the attention scale of the layer.
        bias: optional (B, 1, 1, N) additive logits bias (proportional attention).

    Returns:
        (B, N) attention probabilities.
    """
    logits = torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scaling
    if bias is not None:
        logits = logits + bias.float()
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def _rank01(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis scaled to [0, 1] (ties broken by position)."""
    count = values.shape[-1]
    ranks = values.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True).to(values.dtype)
    return ranks / max(count - 1, 1)


def _zscore(values: torch.Tensor) -> torch.Tensor:
    correction = 1 if values.shape[-1] > 1 else 0
    spread = values.std(dim=-1, keepdim=True, correction=correction).clamp_min(1e-6)
    return (values - values.mean(dim=-1, keepdim=True)) / spread


def information_degree(
    redundancy: torch.Tensor,
    semantic: torch.Tensor | None,
    alpha: float,
    alpha_scale: str = "length",
    semantic_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge priority `E = R - alpha * A'` for candidate tokens (higher merges first).

    Args:
        redundancy: (B, M) largest cosine similarity of each candidate with the other set.
        semantic: (B, M) semantic value of each candidate, or None (then `E = R`).
        alpha: weight of the semantic term.
        alpha_scale: `"raw"` (A as a probability, the paper's form), `"length"` (A divided by
            `semantic_mean`, so uniform attention gives 1 at any length), `"rank"` or `"zscore"`
            (both terms as ranks in [0, 1] or z-scores over the candidates).
        semantic_mean: (B, 1) mean semantic value of the non-protected tokens, for `"length"`.
    """
    if semantic is None or alpha == 0:
        return redundancy
    if alpha_scale == "raw":
        return redundancy - alpha * semantic
    if alpha_scale == "length":
        if semantic_mean is None:
            semantic_mean = semantic.mean(dim=-1, keepdim=True)
        return redundancy - alpha * semantic / semantic_mean.clamp_min(1e-12)
    if alpha_scale == "rank":
        return _rank01(redundancy) - alpha * _rank01(semantic)
    if alpha_scale == "zscore":
        return _zscore(redundancy) - alpha * _zscore(semantic)
    raise ValueError(f"`alpha_scale` must be one of ['length', 'raw', 'rank', 'zscore'], got {alpha_scale!r}.")


def max_reduction(num_tokens: int, protect_first: bool) -> int:
    """The most tokens one bipartite step can remove from `num_tokens` tokens."""
    candidates = (num_tokens + 1) // 2 - (1 if protect_first else 0)
    return max(0, min(candidates, num_tokens // 2))


def bipartite_plan(
    metric: torch.Tensor,
    r: int,
    *,
    mode: str = "turbo",
    semantic: torch.Tensor | None = None,
    alpha: float = 0.0,
    alpha_scale: str = "length",
    protect_first: bool = True,
    generator: torch.Generator | None = None,
    token_mask: torch.Tensor | None = None,
    protected: torch.Tensor | None = None,
    causal: bool = False,
    token_order: str = "spatial",
) -> MergePlan:
    """Choose `r` tokens to remove and their partners with Turbo's bipartite soft matching.

    Set A holds the even positions (with the protected first token), set B the odd ones. Each A token's
    redundancy is its largest cosine similarity to B, its partner the argmax. The `r` A tokens with the
    highest priority leave: by information degree (`"turbo"`), redundancy (`"tome"`), lowest semantic value
    (`"semantic"`) or at random (`"random"`: one priority per candidate position drawn from `generator`,
    shared by every row, so a row's draw does not depend on its batch). Ties in priority are broken by
    position (a stable sort: on equal priority the lower position merges first). The matching (metric,
    similarities, priorities) runs in float32 whatever the dtype of `metric` and `semantic`.

    `token_order` sets the order of the output: `"spatial"` (the kept tokens in ascending position) or
    `"tome"`, ToMe's order (Bolya et al.): the kept A tokens (sorted by position when `protect_first`, so the
    first token stays first; otherwise in descending priority), then every B token. The next step splits
    even/odd over the current order, whichever it is; `new_index` maps every token to its output position.

    For sequences with padding or order constraints (text), three optional constraints apply; with any of
    them, fewer than `r` tokens may leave (the same number in every row: the most every row allows):

    - `token_mask` (B, N) bool, True for real tokens: padding never pairs with a real token, and it leaves
      only after all real candidates of its row (so a padded row merges its real tokens as it would alone);
    - `protected` (B, N) bool: tokens that never leave (e.g. the token a head pools);
    - `causal`: a token only merges into a later one, so no token ever holds content from its future.

    `token_order="tome"` reorders tokens, so it is refused (ValueError) with any of these constraints.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.modeling.merging import bipartite_plan
    >>> metric = torch.nn.functional.normalize(torch.randn(2, 9, 4), dim=-1)
    >>> bipartite_plan(metric, 3, mode="tome").keep_idx.shape
    torch.Size([2, 6])
    ```
    """
    batch, num_tokens, _ = metric.shape
    limit = max_reduction(num_tokens, protect_first)
    if not 0 <= r <= limit:
        raise ValueError(f"`r` must be in [0, {limit}] for {num_tokens} tokens, got {r}.")
    if token_order not in TOKEN_ORDERS:
        raise ValueError(f"`token_order` must be one of {list(TOKEN_ORDERS)}, got {token_order!r}.")
    constrained = token_mask is not None or protected is not None or causal
    if token_order == "tome" and constrained:
        raise ValueError(
            "`token_order='tome'` reorders the tokens, which sequences with padding (`token_mask`), protected "
            "tokens or a causal order (text encoders) cannot follow; use `token_order='spatial'`."
        )
    device = metric.device
    if r == 0:
        positions = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
        empty = positions[:, :0]
        return MergePlan(src_idx=empty, dst_idx=empty, keep_idx=positions, new_index=positions)
    metric = metric.float()
    semantic = None if semantic is None else semantic.float()
    metric_a, metric_b = metric[:, ::2], metric[:, 1::2]
    similarity = torch.matmul(metric_a, metric_b.transpose(-1, -2))
    if token_mask is not None:
        similarity = similarity.masked_fill(token_mask[:, ::2, None] != token_mask[:, None, 1::2], -math.inf)
    if causal:
        positions = torch.arange(num_tokens, device=device)
        similarity = similarity.masked_fill(positions[None, 1::2] < positions[::2, None], -math.inf)
    redundancy, partner = similarity.max(dim=-1)

    if mode == "tome":
        priority = redundancy
    elif mode == "random":
        # one draw per candidate position, shared by every row: a row's choice does not depend on its batch
        draw = torch.rand((1, redundancy.shape[-1]), generator=generator, device="cpu")
        priority = draw.to(device=device, dtype=redundancy.dtype).expand_as(redundancy)
    else:
        if semantic is None:
            raise ValueError(f"`mode={mode!r}` needs the semantic value of every token.")
        semantic_a = semantic[:, ::2].to(redundancy.dtype)
        if mode == "semantic":
            priority = -semantic_a
        else:
            start = 1 if protect_first else 0
            if token_mask is None:
                semantic_mean = semantic[:, start:].mean(dim=-1, keepdim=True).to(redundancy.dtype)
            else:
                real = token_mask[:, start:].to(semantic.dtype)
                semantic_mean = ((semantic[:, start:] * real).sum(-1, keepdim=True) / real.sum(-1, keepdim=True))
                semantic_mean = semantic_mean.clamp_min(1e-12).to(redundancy.dtype)
            candidates = slice(start, None)
            priority = redundancy.clone()
            priority[:, candidates] = information_degree(
                redundancy[:, candidates], semantic_a[:, candidates], alpha, alpha_scale, semantic_mean
            )
    if protect_first:
        priority = priority.clone()
        priority[:, 0] = -math.inf
    if constrained:
        blocked = torch.isinf(redundancy)
        filler = torch.zeros_like(blocked)
        if token_mask is not None:
            # padding with a padding partner fills the rows that run out of real candidates, after them
            filler = ~token_mask[:, ::2] & ~blocked
            blocked |= ~token_mask[:, ::2]
        if protected is not None:
            blocked |= protected[:, ::2]
        if protect_first:
            blocked[:, 0] = True
        priority = priority.masked_fill(blocked, -math.inf).masked_fill(filler, _FILLER_PRIORITY)
        r = min(r, int((~blocked | filler).sum(dim=-1).min()))
        if r == 0:
            return bipartite_plan(metric, 0)

    # stable: on equal priority the lower position merges first
    if torch.onnx.is_in_onnx_export():  # ONNX has no stable sort; its TopK breaks ties by the lower index too
        order = priority.topk(priority.shape[-1], dim=-1).indices
    else:
        order = priority.argsort(dim=-1, descending=True, stable=True)
    chosen = order[:, :r]
    src_idx = chosen * 2
    dst_idx = partner.gather(1, chosen) * 2 + 1

    if token_order == "tome":
        unmerged = order[:, r:]
        if protect_first:
            unmerged = unmerged.sort(dim=-1).values
        odd = torch.arange(1, num_tokens, 2, device=device).expand(batch, num_tokens // 2)
        keep_idx = torch.cat([unmerged * 2, odd], dim=1)
    else:
        keep_idx = _spatial_keep_index(src_idx, num_tokens)
    return _plan_from_keep(src_idx, dst_idx, keep_idx, num_tokens)


def _spatial_keep_index(src_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The kept positions in ascending order, without a data-dependent shape: each kept token is scattered to its
    new position, removed ones to one extra slot that is cut off."""
    batch, kept_count = src_idx.shape[0], num_tokens - src_idx.shape[1]
    positions = torch.arange(num_tokens, device=src_idx.device).expand(batch, num_tokens)
    removed = torch.zeros(batch, num_tokens, dtype=torch.bool, device=src_idx.device).scatter_(1, src_idx, True)
    new_position = positions - torch.cumsum(removed.long(), dim=1)
    slot = new_position.masked_fill(removed, kept_count)
    keep_idx = torch.zeros(batch, kept_count + 1, dtype=positions.dtype, device=src_idx.device)
    return keep_idx.scatter(1, slot, positions)[:, :kept_count]


def _plan_from_keep(src_idx: torch.Tensor, dst_idx: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int) -> MergePlan:
    batch, kept_count = keep_idx.shape
    outputs = torch.arange(kept_count, device=keep_idx.device).expand(batch, kept_count)
    new_index = torch.zeros(batch, num_tokens, dtype=keep_idx.dtype, device=keep_idx.device).scatter(1, keep_idx, outputs)
    new_index = new_index.scatter(1, src_idx, new_index.gather(1, dst_idx))
    return MergePlan(src_idx=src_idx, dst_idx=dst_idx, keep_idx=keep_idx, new_index=new_index)


def plan_from_pairs(src_idx: torch.Tensor, dst_idx: torch.Tensor, num_tokens: int) -> MergePlan:
    """The spatial-order plan in which each token of `src_idx` (B, r) merges into the one at `dst_idx` (B, r)
    (the pairs of any split, e.g. the grid split of `merging_grid.grid_plan`); the kept tokens stay in order."""
    return _plan_from_keep(src_idx, dst_idx, _spatial_keep_index(src_idx, num_tokens), num_tokens)


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `values[b, index[b, i]]` (B, M, C): one `index_select` over the flattened rows (the same copy as a
    `gather` with an expanded index, several times faster on CPU)."""
    batch, rows, channels = values.shape
    offsets = torch.arange(batch, device=index.device).unsqueeze(1) * rows
    picked = values.reshape(batch * rows, channels).index_select(0, (index + offsets).reshape(-1))
    return picked.view(batch, index.shape[1], channels)


def merge_tokens(
    hidden: torch.Tensor, size: torch.Tensor, plan: MergePlan, reduction: str = "merge"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a plan: size-weighted average into the partner (`"merge"`) or drop (`"prune"`).

    Args:
        hidden: (B, N, C) tokens.
        size: (B, N, 1) sizes.
        plan: from `bipartite_plan`.
        reduction: `"merge"` or `"prune"`.

    Returns:
        `(hidden, size)` with N - r tokens; averages are taken in the precision of `size` (float32).
    """
    kept = _gather_rows(hidden, plan.keep_idx)
    kept_size = size.gather(1, plan.keep_idx.unsqueeze(-1))
    if reduction == "prune":
        return kept, kept_size
    dst = plan.new_index.gather(1, plan.dst_idx)
    src_size = size.gather(1, plan.src_idx.unsqueeze(-1))
    src_weighted = _gather_rows(hidden, plan.src_idx) * src_size
    merged_size = kept_size.scatter_add(1, dst.unsqueeze(-1), src_size)
    # in place on the fresh product: two passes over (B, N - r, C) fewer than out-of-place, the same values
    total = (kept * kept_size).scatter_add_(1, dst.unsqueeze(-1).expand_as(src_weighted), src_weighted)
    touched = torch.zeros_like(kept_size, dtype=torch.bool).scatter_(1, dst.unsqueeze(-1), True)
    merged = torch.where(touched, total.div_(merged_size).to(kept.dtype), kept)
    return merged, merged_size


def update_source(source: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Follow a plan in the source map: (B, N0) original token -> index of the token holding it."""
    return plan.new_index.gather(1, source)


def initial_source(batch: int, num_tokens: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The identity source map (B, N): every token holds itself."""
    return torch.arange(num_tokens, device=device).expand(batch, num_tokens).contiguous()


def unmerge(hidden: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Restore the full length: copy each merged token to every original position it stands for.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.modeling.merging import unmerge
    >>> unmerge(torch.tensor([[[1.0], [2.0]]]), torch.tensor([[0, 1, 1]])).flatten().tolist()
    [1.0, 2.0, 2.0]
    ```
    """
    return _gather_rows(hidden, source)


def unmerged_hidden_states(output) -> torch.Tensor:
    """`output.last_hidden_state` with one row per input token: unmerged by the output's `token_source` when it
    carries one (a Turbo output), as it is otherwise (a stock output)."""
    source = getattr(output, "token_source", None)
    hidden = output.last_hidden_state
    return hidden if source is None else unmerge(hidden, source)


def proportional_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias `log(size)` on the key axis, shaped (B, 1, 1, N)."""
    return size.log().to(dtype)[:, None, :, 0].unsqueeze(1)


__all__ = [
    "TOKEN_ORDERS",
    "MergePlan",
    "bipartite_plan",
    "information_degree",
    "initial_source",
    "key_metric",
    "max_reduction",
    "merge_tokens",
    "plan_from_pairs",
    "proportional_bias",
    "semantic_value",
    "unmerge",
    "unmerged_hidden_states",
    "update_source",
]
