"""Reducing image tokens INSIDE a decoder-only language model (FastV-style placement, Turbo's scoring).

Model-agnostic pieces; a language model's forward (`llm_token_reduction_llama.py` for Llama) computes the per-layer
keys and text-query attention rows and calls these, with the masks of `llm_token_masks.py`. The settings are
`TurboConfig.llm_layers`, `llm_keep` and `llm_text_query`, with the shared `mode`, `alpha`, `alpha_scale`,
`reduction` and `seed`. Shapes: `B` batch, `L` tokens in the current sequence, `G` images per sample, `n` tokens per
image, `KV` key/value columns of a layer's cache.

How the language model runs with a reduction before decoder layer `K` (the design these functions serve):

- Selection: per image, `E = R - alpha * A'` from the merge core (`bipartite_plan`: redundancy `R` from the image
  tokens' keys at layer `K`, semantic value `A` = attention the text tokens pay to each image token), in repeated
  bipartite rounds that each remove at most a quarter of the tokens (one round can only remove tokens of one half of
  the split, so bigger rounds would choose by position, not by score). `reduction="merge"` averages a removed token
  into its partner (weighted by size), `"prune"` drops it.
- Sequence: removed tokens leave the hidden states of layers >= K; every kept token keeps its ORIGINAL position id
  (its RoPE rotation), a merged token the position of the token it merged into.
- Cache: layers >= K store only the kept tokens (plus every later token), so their caches are shorter than the
  first layers'. `ReducedCacheState` (kept on the cache object) maps each slot of such a layer's cache to a column of
  the full-length cache (`stage_key_columns`; both in `llm_token_masks.py`).
- Masks: the full-length mask (causal + padding, as the model builds it for layer 0) is built once per call; the
  mask of layers >= K is its kept rows and columns (`gather_mask`), so causality and padding stay exactly as they
  were. Under proportional attention a merged token's `log(size)` (vision sizes times LLM merges) is its key bias in
  every later layer (`LayerStep.attention_bias` of the request's `bias_step`), prefill and decoding.
- Output: the prefill's output is restored to the input length (`restore_length`: a merged token's positions get its
  final hidden state, pruned ones zeros), so logits line up with `input_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .configuration_turbo import TurboConfig
from .merging import bipartite_plan, max_reduction, merge_tokens
from .turbo_encoder import LayerStep

# largest share of the tokens one bipartite round removes (<= 1/2, the most a round can remove)
ROUND_FRACTION = 0.25


@dataclass
class LLMReductionRequest:
    """What a language model needs from its multimodal model to reduce image tokens during a prefill.

    Args:
        is_image: (B, Q) bool, the image tokens of this call.
        tokens_per_image: image tokens of one image.
        sizes: (B, Q, 1) float32 input patches each token stands for after the vision tower (1 for text), or None.
        key_bias: (B, Q) the part of it that the layer-0 mask carries as a key bias (proportional attention), or None.
        bias_step: a step whose `attention_bias(size)` gives the key bias of tokens after an in-LLM reduction (the
            core's rule: `log(size)` under proportional attention with `reduction="merge"`, else None).
        config: the Turbo settings.
    """

    is_image: torch.Tensor
    tokens_per_image: int
    sizes: torch.Tensor | None
    key_bias: torch.Tensor | None
    bias_step: LayerStep
    config: TurboConfig


def step_key_bias(step: LayerStep, size: torch.Tensor) -> torch.Tensor | None:
    """The (B, L) float32 key bias of tokens of sizes (B, L, 1) under `step.attention_bias`, or None."""
    bias = step.attention_bias(size, torch.float32)
    return None if bias is None else bias[:, 0, 0]


# ------------------------------------------------------------------------------------------------------------
# Layout of the image tokens
# ------------------------------------------------------------------------------------------------------------


def image_groups(is_image: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Positions of the image tokens of each sample, grouped per image: (B, G, n).

    Every sample must hold the same number of image tokens, a multiple of `tokens_per_image` (images are
    consecutive runs of `tokens_per_image` tokens in order of appearance).
    """
    counts = is_image.sum(dim=1)
    if tokens_per_image <= 0:
        raise ValueError(f"`tokens_per_image` must be positive, got {tokens_per_image}.")
    if bool((counts != counts[0]).any()) or int(counts[0]) % tokens_per_image:
        raise ValueError(
            "Image token reduction inside the language model needs all image tokens of a prompt in one forward call "
            f"and the same number of images in every sample of the batch ({tokens_per_image} tokens per image); the "
            f"samples of this call hold {counts.tolist()} image tokens (chunked prefill, `prefill_chunk_size`, "
            "splits images and is not supported)."
        )
    batch, length = is_image.shape
    positions = torch.arange(length, device=is_image.device).expand(batch, length)[is_image]
    return positions.view(batch, -1, tokens_per_image)


def text_queries(is_image: torch.Tensor, real: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens query the image tokens: positions (B, Q) and weights (B, Q) (0 for padding).

    Args:
        is_image: (B, L) image tokens.
        real: (B, L) tokens that are not padding.
        how: `"last"` (the last real text token of each sample) or `"all"` (every real text token).
    """
    text = ~is_image & real
    if not bool(text.any(dim=1).all()):
        raise ValueError("Every sample needs at least one text token to score its image tokens.")
    if how == "last":
        positions = torch.arange(is_image.shape[1], device=is_image.device)
        last = (positions * text).argmax(dim=1, keepdim=True)
        return last, torch.ones(last.shape, dtype=torch.float32, device=last.device)
    if how != "all":
        raise ValueError(f"`llm_text_query` must be 'last' or 'all', got {how!r}.")
    batch, length = is_image.shape
    # every sample has the same number of image tokens, so the same number of non-image tokens
    positions = torch.arange(length, device=is_image.device).expand(batch, length)[~is_image].view(batch, -1)
    return positions, text.gather(1, positions).float()


# ------------------------------------------------------------------------------------------------------------
# Semantic value from a few attention rows
# ------------------------------------------------------------------------------------------------------------


def query_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    allowed: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention rows of a few queries over all keys, averaged over heads, without an L x L matrix.

    Args:
        query: (B, H, Q, Dh) queries (position embedding applied).
        keys: (B, H, L, Dh) keys (position embedding applied, repeated to H heads).
        scaling: the attention scale.
        allowed: (B, Q, L) bool, which keys each query sees (causal + padding).
        bias: optional (B, L) additive logits bias (proportional attention).

    Returns:
        (B, Q, L) float32 probabilities; 0 on keys a query does not see (and on rows that see nothing).
    """
    logits = torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scaling
    if bias is not None:
        logits = logits + bias.float()[:, None, None, :]
    logits = logits.masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    return logits.softmax(dim=-1).mean(dim=1) * allowed


def semantic_from_queries(probs: torch.Tensor, allowed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Semantic value (B, L): each key's attention averaged over the weighted queries that can see it."""
    weights = weights.float()[..., None]
    mass = (probs * weights).sum(dim=1)
    seen = (allowed.float() * weights).sum(dim=1)
    return mass / seen.clamp_min(1e-12)


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
        keep_positions: (B, L') positions of the kept tokens in the input sequence, ascending.
        hidden: (B, L', C); size: (B, L', 1) float32; is_image: (B, L') bool.
        new_index: (B, L) for each input token, its position in the output (merged: its partner's; pruned: -1).
    """

    keep_positions: torch.Tensor
    hidden: torch.Tensor
    size: torch.Tensor
    is_image: torch.Tensor
    new_index: torch.Tensor


def gather_tokens(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, L, ...) at index (B, K) -> (B, K, ...)."""
    shape = index.shape + values.shape[2:]
    flat = index.reshape(index.shape[0], -1, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, flat).view(shape)


def reduce_image_tokens(
    hidden: torch.Tensor,
    size: torch.Tensor,
    is_image: torch.Tensor,
    tokens_per_image: int,
    metric: torch.Tensor,
    semantic: torch.Tensor | None,
    keep: int,
    settings: ReductionSettings,
    layer_idx: int = 0,
) -> StageReduction:
    """Reduce the image tokens of every image in a sequence to `keep`; text tokens stay untouched.

    Args:
        hidden: (B, L, C) the sequence; size: (B, L, 1) sizes (1 for text).
        is_image: (B, L) image tokens (each sample: G images of `tokens_per_image` consecutive image tokens).
        metric: (B, L, D) L2-normalised keys (only the image tokens' rows are read).
        semantic: (B, L) semantic values or None (only the image tokens' entries are read).
        keep: image tokens left per image.
    """
    batch, length, channels = hidden.shape
    if keep > tokens_per_image:
        raise ValueError(f"Cannot keep {keep} image tokens per image: only {tokens_per_image} are there.")
    groups = image_groups(is_image, tokens_per_image)  # (B, G, n)
    num_images = groups.shape[1]
    flat = groups.view(batch, -1)
    rows = batch * num_images
    group_hidden = gather_tokens(hidden, flat).view(rows, tokens_per_image, channels)
    group_size = gather_tokens(size, flat).view(rows, tokens_per_image, 1).float()
    group_metric = gather_tokens(metric, flat).view(rows, tokens_per_image, -1)
    group_semantic = None if semantic is None else semantic.gather(1, flat).view(rows, tokens_per_image)
    new_hidden, new_size, kept, slot = reduce_group_tokens(
        group_hidden, group_size, group_metric, group_semantic, keep, settings, layer_idx
    )

    kept_positions = groups.gather(2, kept.view(batch, num_images, keep))  # (B, G, keep)
    keep_mask = ~is_image
    keep_mask = keep_mask.scatter(1, kept_positions.view(batch, -1), True)
    new_length = length - num_images * (tokens_per_image - keep)
    positions = torch.arange(length, device=hidden.device).expand(batch, length)
    keep_positions = positions[keep_mask].view(batch, new_length)

    out_image = is_image.gather(1, keep_positions)
    out_hidden = gather_tokens(hidden, keep_positions)
    out_size = gather_tokens(size.float(), keep_positions)
    if settings.reduction == "merge" and keep:
        out_hidden = out_hidden.masked_scatter(out_image[..., None], new_hidden.to(out_hidden.dtype))
        out_size = out_size.masked_scatter(out_image[..., None], new_size)

    old_to_new = torch.full((batch, length), -1, dtype=torch.long, device=hidden.device)
    old_to_new.scatter_(1, keep_positions, torch.arange(new_length, device=hidden.device).expand(batch, new_length))
    slot = slot.view(batch, num_images, tokens_per_image)
    if keep:
        holder = kept_positions.gather(2, slot.clamp_min(0))  # input position of the token holding each image token
        image_new = torch.where(slot >= 0, old_to_new.gather(1, holder.view(batch, -1)).view_as(slot), -1)
    else:
        image_new = torch.full_like(slot, -1)
    new_index = old_to_new.scatter(1, flat, image_new.view(batch, -1))
    return StageReduction(
        keep_positions=keep_positions, hidden=out_hidden, size=out_size, is_image=out_image, new_index=new_index
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
    "image_groups",
    "query_attention",
    "reduce_group_tokens",
    "reduce_image_tokens",
    "restore_length",
    "semantic_from_queries",
    "step_key_bias",
    "text_queries",
]
