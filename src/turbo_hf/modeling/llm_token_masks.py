"""Attention masks of a decoder-only language model whose image tokens carry a key bias or were reduced.

Model-agnostic (any full-causal decoder whose masks come from `transformers.masking_utils`):

- `image_bias_mask`: the stock causal + padding mask plus a per-key bias (`log(size)` of merged image tokens), with
  the bias of every token seen so far kept on the KV cache object (`CACHE_BIAS_ATTRIBUTE`) for later decoding steps.
- `gather_mask`, `stage_key_columns`, `ReducedCacheState`: the masks of the layers after an in-LLM reduction
  (`llm_decoder_layers.py`) are the kept rows and columns of the full-length mask, so causality and padding stay
  exactly as they were; `ReducedCacheState` maps each slot of a shorter cache to a full column.
- `check_full_attention`: the attention kernels and layer types these masks work with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask, find_first_full_attention_index

from .compat import cache_kwargs

MASK_IMPLEMENTATIONS = ("eager", "sdpa")
CACHE_BIAS_ATTRIBUTE = "turbo_image_key_bias"
STATE_ATTRIBUTE = "turbo_llm_state"


def check_full_attention(text_config, feature: str, remedy: str) -> None:
    """Refuse a language model whose layers cannot take these masks: every layer full causal attention (no
    sliding window) and an attention kernel that takes a 4D mask (`MASK_IMPLEMENTATIONS`).

    Args:
        text_config: the language model's config.
        feature: what needs the masks, to start the error message.
        remedy: how to do without it, to end the error message.
    """
    layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"} or getattr(text_config, "sliding_window", None) is not None:
        raise ValueError(
            f"{feature} needs full causal attention in every layer of the language model (Llama, Vicuna); this "
            f"one has {sorted(layer_types)} layers / a sliding window. {remedy}"
        )
    implementation = text_config._attn_implementation
    if implementation not in MASK_IMPLEMENTATIONS:
        raise ValueError(
            f"{feature} gives the language model its own 4D float attention mask, which `{implementation}` cannot "
            f"take: load the model with attn_implementation='sdpa' or 'eager'. {remedy}"
        )


@dataclass
class ReducedCacheState:
    """What a KV cache needs after its prefill removed image tokens in some layers.

    Attributes:
        layers: the first decoder layer of each reduced stage (`llm_layers`).
        prefill_length: full-length cache columns written by the prefill.
        columns: per stage, (B, n_s) the full-cache column of each token the stage's layers hold from the prefill.
        key_bias: per stage, (B, n_s) float32 `log(size)` of those tokens, or None (no proportional attention).
    """

    layers: list[int]
    prefill_length: int
    columns: list[torch.Tensor]
    key_bias: list[torch.Tensor | None]

    @property
    def batch_size(self) -> int:
        return self.columns[0].shape[0]


def full_causal_mask(config, inputs_embeds: torch.Tensor, attention_mask, cache, position_ids) -> torch.Tensor:
    """The causal + padding mask the model builds for its first layer, always materialized (no `is_causal` skip).

    `attention_mask` (2D padding mask or None), `cache` (a `Cache` or None) and `position_ids` (or None: the
    positions after the cached tokens) are what the model's forward received.
    """
    if position_ids is None:
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        allow_is_causal_skip=False,
        **cache_kwargs(cache),
    )


def allowed_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 4D mask (bool: True = attend; float: 0/bias = attend, dtype minimum = masked) as bool."""
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def add_key_bias(base: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4D mask (bool or float) plus a (B, 1, 1, KV) key bias, as a float mask of `dtype`."""
    if base.dtype == torch.bool:
        return torch.where(base, bias.to(dtype), torch.finfo(dtype).min)
    return base + bias.to(base.dtype)


def finalize_mask(
    allowed: torch.Tensor, bias: torch.Tensor | None, implementation: str, dtype: torch.dtype
) -> torch.Tensor:
    """The mask a layer takes: bool for SDPA without a bias, else float (bias where allowed, dtype minimum elsewhere).

    Args:
        allowed: (B, 1, Q, KV) bool.
        bias: optional (B, KV) additive key bias (`log(size)`).
    """
    if bias is None and implementation == "sdpa":
        return allowed
    value = torch.zeros((), dtype=dtype, device=allowed.device) if bias is None else bias[:, None, None, :]
    return add_key_bias(allowed, value, dtype)


def image_bias_mask(
    text_config,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past_key_values: Cache | None,
    position_ids: torch.Tensor | None,
    chunk_bias: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The language model's attention mask with a key bias on (merged) image tokens.

    Args:
        chunk_bias: (B, Q) the key bias of this call's tokens (0 for text), or None.

    Returns:
        `(mask, key_bias)`: the stock `attention_mask` and None when no key carries a bias (neither this call nor
        the cache); else a 4D float mask and the bias of every token seen so far (B, past + Q), to keep on the
        cache (`CACHE_BIAS_ATTRIBUTE`).
    """
    past = past_key_values.get_seq_length() if past_key_values is not None else 0
    previous = getattr(past_key_values, CACHE_BIAS_ATTRIBUTE, None) if past else None  # a reset cache has none
    if chunk_bias is None and previous is None:
        return attention_mask, None
    batch, q_length = inputs_embeds.shape[:2]
    key_bias = torch.zeros(batch, past + q_length, device=inputs_embeds.device, dtype=torch.float32)
    if previous is not None:
        if previous.shape[0] != batch:
            raise ValueError(
                f"The KV cache holds a Turbo image bias for a batch of {previous.shape[0]}, this call has {batch}."
            )
        kept = min(previous.shape[1], past)
        key_bias[:, :kept] = previous[:, :kept].to(key_bias.device)
    if chunk_bias is not None:
        key_bias[:, past:] = chunk_bias
    check_full_attention(
        text_config,
        "Proportional attention on merged image tokens",
        "Without it: set `proportional_attention=False` in the Turbo config.",
    )
    if attention_mask is not None and attention_mask.ndim == 4:
        base = attention_mask
    else:
        base = full_causal_mask(text_config, inputs_embeds, attention_mask, past_key_values, position_ids)
    kv_length, kv_offset = base.shape[-1], 0
    if past_key_values is not None:
        _, kv_offset = past_key_values.get_mask_sizes(q_length, find_first_full_attention_index(past_key_values))
    columns = torch.arange(kv_length, device=key_bias.device) + int(kv_offset)
    known = columns < key_bias.shape[1]
    bias = torch.zeros(batch, kv_length, device=key_bias.device, dtype=torch.float32)
    bias[:, known] = key_bias[:, columns[known]]
    bias = bias[:, None, None, :].to(device=base.device)
    return add_key_bias(base, bias, inputs_embeds.dtype), key_bias


def stage_key_columns(
    kept_columns: torch.Tensor, prefill_length: int, kv_length: int, full_kv_length: int
) -> torch.Tensor:
    """Full-cache column of every key slot of a reduced layer: (B, kv_length), -1 where the slot is unused.

    A reduced layer's cache holds the `n` prefill tokens it kept (`kept_columns`, (B, n)) then every later token in
    order (full columns `prefill_length`, `prefill_length + 1`, ...); a static cache has unused slots at the end.
    """
    batch, kept = kept_columns.shape
    later = torch.arange(kv_length - kept, device=kept_columns.device) + prefill_length
    later = torch.where(later < full_kv_length, later, -1)
    return torch.cat([kept_columns, later.expand(batch, -1)], dim=1)


def gather_mask(allowed: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """The rows and columns of a full 4D bool mask (B, 1, Q, KV) kept by a reduction.

    Args:
        allowed: (B, 1, Q, KV) bool.
        rows: (B, Q') query rows to keep, or None for all.
        columns: (B, KV') full columns of the reduced keys, -1 for unused slots (masked).
    """
    mask = allowed[:, 0]
    if rows is not None:
        mask = mask.gather(1, rows[..., None].expand(-1, -1, mask.shape[-1]))
    index = columns.clamp_min(0)[:, None, :].expand(-1, mask.shape[1], -1)
    return (mask.gather(2, index) & (columns >= 0)[:, None, :])[:, None]


__all__ = [
    "CACHE_BIAS_ATTRIBUTE",
    "MASK_IMPLEMENTATIONS",
    "ReducedCacheState",
    "STATE_ATTRIBUTE",
    "add_key_bias",
    "allowed_from_mask",
    "check_full_attention",
    "finalize_mask",
    "full_causal_mask",
    "gather_mask",
    "image_bias_mask",
    "stage_key_columns",
]
