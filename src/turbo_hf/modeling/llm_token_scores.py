"""Turbo's two scores of the tokens at the input of a decoder layer of a language model, for the in-LLM reduction.

`decoder_layer_scores` reads them off a layer that follows Transformers' decoder conventions (`input_layernorm`,
`self_attn.q_proj`/`k_proj`, optional `q_norm`/`k_norm`, `head_dim`, `scaling`, `num_key_value_groups`, rotary
`position_embeddings` as `(cos, sin)` of shape (B, L, head_dim): Llama, Qwen2, Qwen2-VL's mRoPE after its
recomposition): the redundancy metric from the layer's keys and the semantic value from a few attention rows of the
text queries (no L x L matrix, so the layer keeps running on SDPA).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from .llm_token_reduction import gather_tokens
from .merging import key_metric


def text_queries(is_image: torch.Tensor, real: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens query the image tokens: positions (B, Q) and weights (B, Q) (0 for the filler entries).

    Args:
        is_image: (B, L) image tokens.
        real: (B, L) tokens that are neither padding nor dead slots.
        how: `"last"` (the last real text token of each sample) or `"all"` (every real text token; samples with
            fewer text tokens are filled with weight-0 entries).
    """
    text = ~is_image & real
    if not bool(text.any(dim=1).all()):
        raise ValueError("Every sample needs at least one text token to score its image tokens.")
    positions = torch.arange(is_image.shape[1], device=is_image.device).expand_as(is_image)
    if how == "last":
        last = (positions * text).argmax(dim=1, keepdim=True)
        return last, torch.ones(last.shape, dtype=torch.float32, device=last.device)
    if how != "all":
        raise ValueError(f"`llm_text_query` must be 'last' or 'all', got {how!r}.")
    count = int(text.sum(dim=1).max())
    order = (~text).int().argsort(dim=1, stable=True)[:, :count]  # the text tokens first, in order
    return order, text.gather(1, order).float()


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


def rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding (`apply_rotary_pos_emb`) of (B, H, N, Dh) states with (B, N, Dh) cos/sin."""
    # Copied from transformers.models.llama.modeling_llama.apply_rotary_pos_emb (v5.24), for one tensor
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (states * cos) + (rotate_half(states) * sin)


def _heads(attention, projection: str, norm: str, states: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, head_dim) through `attention.<projection>` and its per-head `<norm>` if any."""
    batch, length = states.shape[:2]
    heads = getattr(attention, projection)(states).view(batch, length, -1, attention.head_dim)
    if getattr(attention, norm, None) is not None:  # Qwen3-style q_norm / k_norm
        heads = getattr(attention, norm)(heads)
    return heads.transpose(1, 2)


def decoder_layer_scores(
    layer,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    allowed: torch.Tensor,
    key_bias: torch.Tensor | None,
    is_image: torch.Tensor,
    text_query: str,
    needs_semantic: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Redundancy metric and semantic value of every token at the input of a decoder layer.

    The metric is `key_metric` of the layer's keys (`k_proj` of the normalised hidden states, BEFORE the rotary
    embedding, so that it compares content and not position; averaged over key heads). The semantic value is the
    attention that the text queries (`"last"` real text token or `"all"` of them) pay to each token, computed as
    a few attention rows with the rotary embedding applied as the layer applies it, the layer's scaling, the
    given mask rows and key bias.

    Args:
        layer: a decoder layer (`input_layernorm`, `self_attn`).
        hidden: (B, L, C) its input; cos, sin: (B, L, Dh) rotary embedding of those tokens.
        allowed: (B, L, L) bool, which tokens each token sees (causal + padding + dead slots).
        key_bias: (B, L) additive key bias of the layer's attention (log sizes), or None.
        is_image: (B, L) image tokens.

    Returns:
        `(metric, semantic)`: (B, L, Dh) and (B, L) or None.
    """
    attention = layer.self_attn
    length = hidden.shape[1]
    normed = layer.input_layernorm(hidden)
    keys = _heads(attention, "k_proj", "k_norm", normed)
    metric = key_metric(keys)
    if not needs_semantic:
        return metric, None
    real = allowed.diagonal(dim1=1, dim2=2)
    positions, weights = text_queries(is_image, real, text_query)
    query = _heads(attention, "q_proj", "q_norm", gather_tokens(normed, positions))
    query = rotary(query, gather_tokens(cos, positions), gather_tokens(sin, positions))
    keys = repeat_kv(rotary(keys, cos, sin), attention.num_key_value_groups)
    rows = allowed.gather(1, positions[..., None].expand(-1, -1, length))
    probs = query_attention(query, keys, attention.scaling, rows, key_bias)
    return metric, semantic_from_queries(probs, rows, weights)


__all__ = ["decoder_layer_scores", "query_attention", "rotary", "semantic_from_queries", "text_queries"]
