"""Reducing image tokens INSIDE a decoder-only language model (FastV-style placement, Turbo's scoring).

Model-agnostic pieces: `llm_decoder_layers.py` runs them inside the stock decoder loop of any language model that
follows Transformers' decoder-layer conventions, with the scores of `llm_token_scores.py` and the masks of
`llm_token_masks.py`. The settings are `TurboConfig.llm_layers`, `llm_keep` and `llm_text_query`, with the shared
`mode`, `alpha`, `alpha_scale`, `reduction` and `seed`. Shapes: `B` batch, `L` tokens in the current sequence,
`n` tokens of one image (images may differ: Qwen2-VL's grids), `KV` key/value columns of a layer's cache.

How the language model runs with a reduction before decoder layer `K` (the design these functions serve):

- Selection: per image, `E = R - alpha * A'` from the merge core (`bipartite_plan`: redundancy `R` from the image
  tokens' keys at layer `K`, semantic value `A` = attention the text tokens pay to each image token), in repeated
  bipartite rounds that each remove at most a quarter of the tokens (one round can only remove tokens of one half of
  the split, so bigger rounds would choose by position, not by score). `reduction="merge"` averages a removed token
  into its partner (weighted by size), `"prune"` drops it. Images with the same token count and keep count are
  reduced together; a row's result never depends on the other rows.
- Sequence: removed tokens leave the hidden states of layers >= K; every kept token keeps its ORIGINAL position
  (its rotary embedding, 1-D or Qwen's 3-D mRoPE, is gathered, not recomputed), a merged token the position of the
  token it merged into. Samples that keep fewer tokens than the longest one are filled on the left with dead slots
  (`keep_positions == -1`): masked as keys, never read back.
- Cache: layers >= K store only the kept tokens (plus every later token), so their caches are shorter than the
  first layers'. `ReducedCacheState` (kept on the cache object) maps each slot of such a layer's cache to a column of
  the full-length cache (`stage_key_columns`; both in `llm_token_masks.py`).
- Masks: the mask of layers >= K is the kept rows and columns of the full-length causal + padding mask
  (`gather_mask`), so causality and padding stay exactly as they were. Under proportional attention a merged token's
  `log(size)` (vision sizes times LLM merges) is its key bias in every later layer (`LayerStep.attention_bias` of
  the request's `bias_step`), prefill and decoding.
- Output: the prefill's output is restored to the input length (`restore_length`: a merged token's positions get its
  final hidden state, pruned ones zeros), so logits line up with `input_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .configuration_turbo import TurboConfig
from .llm_token_layout import CHUNKED
from .merging import bipartite_plan, max_reduction, merge_tokens
from .turbo_encoder import LayerStep

# largest share of the tokens one bipartite round removes (<= 1/2, the most a round can remove)
ROUND_FRACTION = 0.25


@dataclass
class LLMReductionRequest:
    """What a language model needs from its multimodal model to reduce visual tokens during a prefill, or to give
    merged ones their `log(size)` bias.

    Args:
        is_visual: (B, Q) bool, the visual tokens of this call (images and videos).
        item_counts: per sample, the token count of each of its visual items (an image or a video) in order of
            appearance (`llm_token_layout.visual_item_counts` builds it).
        sizes: (B, Q, 1) float32 input patches each token stands for before the language model (1 for text), or
            None (all 1).
        key_bias: (B, Q) their key bias (proportional attention: `bias_step.attention_bias(sizes)`), or None.
        bias_step: a step whose `attention_bias(size)` gives the key bias of tokens after an in-LLM reduction (the
            core's rule: `log(size)` under proportional attention with `reduction="merge"`, else None).
        config: the Turbo settings (`llm_layers` may be None: the request then only brings `key_bias`).
        bias_in_mask: the layer-0 mask the language model gets carries `key_bias` already (LLaVA-1.5 builds its
            mask); else the run adds it to the mask of every layer, prefill and decoding.
    """

    is_visual: torch.Tensor
    item_counts: list[list[int]]
    sizes: torch.Tensor | None
    key_bias: torch.Tensor | None
    bias_step: LayerStep
    config: TurboConfig
    bias_in_mask: bool = False


def step_key_bias(step: LayerStep, size: torch.Tensor) -> torch.Tensor | None:
    """The (B, L) float32 key bias of tokens of sizes (B, L, 1) under `step.attention_bias`, or None."""
    bias = step.attention_bias(size, torch.float32)
    return None if bias is None else bias[:, 0, 0]


def keep_count(entry: int | float, tokens: int) -> int:
    """Tokens an image of `tokens` tokens keeps for one `llm_keep` entry: an int keeps at most that many (an image
    with fewer keeps all), a float in (0, 1) that share of them, rounded, at least 1.

    Example:

    ```python
    >>> from turbo_hf.modeling.llm_token_reduction import keep_count
    >>> keep_count(16, 64), keep_count(16, 9), keep_count(0.25, 30)
    (16, 9, 8)
    ```
    """
    if isinstance(entry, float):
        return min(tokens, max(1, int(entry * tokens + 0.5)))
    return min(tokens, entry)


# ------------------------------------------------------------------------------------------------------------
# Selection and reduction
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReductionSettings:
    """The scoring settings of one reduction (from `TurboConfig.score_settings()`)."""

    mode: str
    alpha: float
    alpha_scale: str
    reduction: str
    seed: int

    @classmethod
    def from_config(cls, config) -> ReductionSettings:
        settings = config.score_settings()
        return cls(
            mode=settings["mode"],
            alpha=settings["alpha"],
            alpha_scale=settings["alpha_scale"],
            reduction=settings["reduction"],
            seed=settings["seed"],
        )

    @property
    def needs_semantic(self) -> bool:
        return self.mode in ("turbo", "semantic")


def reduce_group_tokens(
    hidden: torch.Tensor,
    size: torch.Tensor,
    metric: torch.Tensor,
    semantic: torch.Tensor | None,
    keep: int,
    settings: ReductionSettings,
    layer_idx: int = 0,
    round_fraction: float = ROUND_FRACTION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduce each row of `n` tokens to `keep` tokens with repeated bipartite rounds of the merge core.

    Args:
        hidden: (M, n, C) tokens; size: (M, n, 1) sizes; metric: (M, n, D) L2-normalised keys.
        semantic: (M, n) semantic values (needed by modes "turbo" and "semantic").
        keep: tokens left per row.
        settings: scoring and reduction settings.
        layer_idx: seeds the `"random"` mode with `seed` (one priority per position, shared by all rows, so a
            sample's choice does not depend on the batch it is in).
        round_fraction: largest share of the tokens a round removes.

    Returns:
        `(hidden, size, keep_idx, new_index)`: (M, keep, C), (M, keep, 1), the kept tokens' positions (M, keep)
        ascending, and for each input token its output slot (M, n) (a merged token: its partner's slot; a pruned
        token: -1).
    """
    rows, count = hidden.shape[:2]
    device = hidden.device
    if not 0 <= keep <= count:
        raise ValueError(f"Cannot keep {keep} of {count} tokens.")
    positions = torch.arange(count, device=device).expand(rows, count)
    if keep == 0:
        if settings.reduction != "prune":
            raise ValueError("`llm_keep=0` removes every image token: only `reduction='prune'` can do that.")
        empty = positions[:, :0]
        return hidden[:, :0], size[:, :0], empty, torch.full_like(positions, -1)
    slot = positions.clone()
    kept = positions
    generator = None
    if settings.mode == "random":
        generator = torch.Generator().manual_seed(settings.seed * 10_007 + layer_idx)
    metric = metric.float()
    semantic = None if semantic is None else semantic.float()
    while hidden.shape[1] > keep:
        current = hidden.shape[1]
        r = min(current - keep, max(1, int(current * round_fraction)), max_reduction(current, protect_first=False))
        mode, values = settings.mode, semantic
        if mode == "random":  # random priorities shared by all rows: "semantic" mode on random values
            mode = "semantic"
            values = torch.rand(1, current, generator=generator).to(device).expand(rows, current)
        plan = bipartite_plan(
            metric,
            r,
            mode=mode,
            semantic=values,
            alpha=settings.alpha,
            alpha_scale=settings.alpha_scale,
            protect_first=False,
        )
        if settings.reduction == "merge":
            new_hidden, new_size = merge_tokens(hidden, size, plan, "merge")
            merged_metric = merge_tokens(metric, size, plan, "merge")[0]
            metric = merged_metric / merged_metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            if semantic is not None:  # a merged token receives the attention of all it stands for
                semantic = merge_tokens((semantic / size[..., 0])[..., None], size, plan, "merge")[0][..., 0]
                semantic = semantic * new_size[..., 0]
            new_index = plan.new_index
        else:
            new_hidden, new_size = merge_tokens(hidden, size, plan, "prune")
            metric = metric.gather(1, plan.keep_idx[..., None].expand(-1, -1, metric.shape[-1]))
            if semantic is not None:
                semantic = semantic.gather(1, plan.keep_idx)
            new_index = plan.new_index.scatter(1, plan.src_idx, -1)
        hidden, size = new_hidden, new_size
        slot = torch.where(slot >= 0, new_index.gather(1, slot.clamp_min(0)), -1)
        kept = kept.gather(1, plan.keep_idx)
    return hidden, size, kept, slot


@dataclass
class StageReduction:
    """One reduction of a sequence (B, L) -> (B, L').

    Attributes:
        keep_positions: (B, L') positions of the kept tokens in the input sequence, ascending; -1 for the dead
            slots that fill a sample keeping fewer tokens than the longest one (on the left).
        hidden: (B, L', C); size: (B, L', 1) float32; is_image: (B, L') bool (False on dead slots).
        new_index: (B, L) for each input token, its position in the output (merged: its partner's; pruned and
            dead: -1).
        image_counts: per sample, the token count of each image after the reduction.
    """

    keep_positions: torch.Tensor
    hidden: torch.Tensor
    size: torch.Tensor
    is_image: torch.Tensor
    new_index: torch.Tensor
    image_counts: list[list[int]]


def gather_tokens(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, L, ...) at index (B, K) -> (B, K, ...)."""
    shape = index.shape + values.shape[2:]
    flat = index.reshape(index.shape[0], -1, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, flat).view(shape)


def _image_runs(is_image: torch.Tensor, image_counts: list[list[int]]) -> list[tuple[int, torch.Tensor]]:
    """Every image as `(sample, positions (n,))`, in order."""
    runs = []
    for sample, counts in enumerate(image_counts):
        positions = is_image[sample].nonzero()[:, 0]
        if positions.numel() != sum(counts):
            raise ValueError(f"{CHUNKED}: sample {sample} holds {positions.numel()} image tokens, not {sum(counts)}.")
        runs += [(sample, part) for part in positions.split(counts)]
    return runs


def reduce_image_tokens(
    hidden: torch.Tensor,
    size: torch.Tensor,
    is_image: torch.Tensor,
    alive: torch.Tensor,
    image_counts: list[list[int]],
    keeps: list[list[int]],
    metric: torch.Tensor,
    semantic: torch.Tensor | None,
    settings: ReductionSettings,
    layer_idx: int = 0,
) -> StageReduction:
    """Reduce every image of a sequence to its keep count; the other live tokens stay untouched.

    Args:
        hidden: (B, L, C) the sequence; size: (B, L, 1) sizes (1 for text).
        is_image: (B, L) image tokens; alive: (B, L) tokens that are not dead slots of an earlier reduction.
        image_counts: per sample, the token count of each image (consecutive runs of image tokens, in order).
        keeps: per sample, the tokens each image keeps.
        metric: (B, L, D) L2-normalised keys (only the image tokens' rows are read).
        semantic: (B, L) semantic values or None (only the image tokens' entries are read).
    """
    batch, length, _ = hidden.shape
    device = hidden.device
    runs = _image_runs(is_image, image_counts)
    flat_keeps = [keep for sample_keeps in keeps for keep in sample_keeps]
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, ((_, positions), keep) in enumerate(zip(runs, flat_keeps)):
        if not 0 <= keep <= positions.numel():
            raise ValueError(f"Cannot keep {keep} of the {positions.numel()} tokens of an image.")
        buckets.setdefault((positions.numel(), keep), []).append(index)

    keep_mask = alive & ~is_image
    results = []  # (samples (M,), positions (M, n), kept (M, keep), slot (M, n), hidden, size)
    for (count, keep), members in buckets.items():
        samples = torch.tensor([runs[i][0] for i in members], device=device)
        positions = torch.stack([runs[i][1] for i in members])
        rows = samples[:, None].expand(-1, count)
        group_semantic = None if semantic is None else semantic[rows, positions]
        new_hidden, new_size, kept, slot = reduce_group_tokens(
            hidden[rows, positions], size[rows, positions].float(), metric[rows, positions], group_semantic, keep,
            settings, layer_idx,
        )
        kept_positions = positions.gather(1, kept)
        keep_mask[samples[:, None].expand_as(kept_positions), kept_positions] = True
        results.append((samples, positions, kept_positions, slot, new_hidden, new_size))

    new_length = int(keep_mask.sum(dim=1).max())
    index = torch.arange(length, device=device).expand(batch, length)
    keep_positions = torch.where(keep_mask, index, -1).sort(dim=1).values[:, length - new_length :]
    valid = keep_positions >= 0
    gathered = keep_positions.clamp_min(0)
    out_hidden = gather_tokens(hidden, gathered)
    out_size = gather_tokens(size.float(), gathered)
    out_image = is_image.gather(1, gathered) & valid
    old_to_new = torch.full((batch, length), -1, dtype=torch.long, device=device)
    slots = torch.arange(new_length, device=device).expand(batch, new_length)
    batch_index = torch.arange(batch, device=device)[:, None].expand_as(keep_positions)
    old_to_new[batch_index[valid], keep_positions[valid]] = slots[valid]
    new_index = torch.where(keep_mask, old_to_new, -1)
    for samples, positions, kept_positions, slot, new_hidden, new_size in results:
        rows = samples[:, None]
        if settings.reduction == "merge" and kept_positions.shape[1]:
            out_slots = old_to_new[rows.expand_as(kept_positions), kept_positions]
            out_hidden[rows.expand_as(out_slots), out_slots] = new_hidden.to(out_hidden.dtype)
            out_size[rows.expand_as(out_slots), out_slots] = new_size
        if kept_positions.shape[1]:
            holder = kept_positions.gather(1, slot.clamp_min(0))  # input position of the token holding each one
            moved = torch.where(slot >= 0, old_to_new[rows.expand_as(holder), holder], -1)
        else:
            moved = torch.full_like(slot, -1)
        new_index[rows.expand_as(positions), positions] = moved
    counts_after = [list(sample_keeps) for sample_keeps in keeps]
    return StageReduction(
        keep_positions=keep_positions,
        hidden=out_hidden,
        size=out_size,
        is_image=out_image,
        new_index=new_index,
        image_counts=counts_after,
    )


def follow(holder: torch.Tensor, new_index: torch.Tensor) -> torch.Tensor:
    """Compose a token map (B, L0) -> current position (-1: gone) with a reduction's `new_index`."""
    return torch.where(holder >= 0, new_index.gather(1, holder.clamp_min(0)), -1)


def restore_length(hidden: torch.Tensor, holder: torch.Tensor) -> torch.Tensor:
    """Back to the input length: each input token gets the output of the token that holds it (zeros if pruned)."""
    restored = gather_tokens(hidden, holder.clamp_min(0))
    return restored.masked_fill((holder < 0)[..., None], 0)


__all__ = [
    "LLMReductionRequest",
    "ROUND_FRACTION",
    "ReductionSettings",
    "StageReduction",
    "follow",
    "gather_tokens",
    "keep_count",
    "reduce_group_tokens",
    "reduce_image_tokens",
    "restore_length",
    "step_key_bias",
]
