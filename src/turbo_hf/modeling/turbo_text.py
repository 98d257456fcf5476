"""Turbo for text encoders: padded batches, protected pooling tokens and causal towers.

Text layers carry `(hidden, size, source, token_mask)`: `token_mask` (B, N) marks real tokens. Padding never
merges and never receives a real token, so a padded row merges exactly as it would alone; every row removes
the same number of tokens (the most that every row allows). The pooled token (a [CLS], an EOS or the last
token) is protected and its current index is read from the source map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .merging import initial_source, merge_tokens, unmerge, update_source
from .turbo_encoder import LayerStep, TurboRuntime


def text_token_mask(attention_mask: torch.Tensor | None, embeddings: torch.Tensor) -> torch.Tensor:
    """The real tokens (B, N) of a text batch from its 2D padding mask (all of them without one), refusing left
    padding: merging keeps padding at the end of every row, so the first token must be real."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
    if not bool(attention_mask[:, 0].all()):
        raise ValueError(
            "Turbo text merging needs right padding (`tokenizer.padding_side = 'right'`): "
            "`attention_mask[:, 0]` must be 1 in every row."
        )
    return attention_mask.bool()


def text_self_attention(
    module: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    eager_fn: Callable,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Self-attention of a BERT-style module (`query`, `key`, `value`, `attention_head_size`, `dropout`)
    through the attention interface (`eager_fn` for eager attention), bidirectional unless the module says
    `is_causal`; returns the context (B, N, C), the weights, and the queries and keys (B, H, N, Dh) Turbo scores.
    """
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, module.attention_head_size)
    query = module.query(hidden_states).view(*hidden_shape).transpose(1, 2)
    keys = module.key(hidden_states).view(*hidden_shape).transpose(1, 2)
    values = module.value(hidden_states).view(*hidden_shape).transpose(1, 2)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_fn)
    kwargs.setdefault("is_causal", getattr(module, "is_causal", False))
    dropout = 0.0 if not module.training else module.dropout.p
    output, weights = interface(module, query, keys, values, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return output.reshape(*input_shape, -1).contiguous(), weights, query, keys


def _key_bias(step: LayerStep, size: torch.Tensor, token_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    bias = step.attention_bias(size, dtype)
    if bias is None:
        bias = torch.zeros(size.shape[0], 1, 1, size.shape[1], dtype=dtype, device=size.device)
    return bias.masked_fill(~token_mask[:, None, None, :], torch.finfo(dtype).min)


def text_attention_bias(
    step: LayerStep, size: torch.Tensor, token_mask: torch.Tensor, dtype: torch.dtype, causal: bool = False
) -> torch.Tensor | None:
    """Once tokens have merged: `log(size)` on real keys and the dtype minimum on padding, (B, 1, 1, N), or
    with `causal` the same plus the causal triangle over the current tokens, (B, 1, N, N).

    Merges only go forward in causal towers (see `bipartite_plan`), so the causal order of the kept tokens is
    their order. None before the first merge, so the layer keeps the model's own mask (bit-identical at r=0).
    """
    if not step.merged_before:
        return None
    bias = _key_bias(step, size, token_mask, dtype)
    if causal:
        length = size.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=size.device).triu(1)
        bias = bias.expand(-1, -1, length, -1).masked_fill(future, torch.finfo(dtype).min)
    return bias


def reduce_text(
    step: LayerStep,
    hidden: torch.Tensor,
    size: torch.Tensor,
    source: torch.Tensor,
    token_mask: torch.Tensor,
    query: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    *,
    pooled: torch.Tensor,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove up to `step.r` real tokens per row; `pooled` (B,) holds the original position of the token a
    head reads (protected, and the summary query of the semantic value, which attends to every real key)."""
    if step.r == 0:
        return hidden, size, source, token_mask
    current = source.gather(1, pooled[:, None])[:, 0]
    protected = torch.zeros_like(token_mask).scatter_(1, current[:, None], True)
    plan = step.plan(
        size,
        query,
        keys,
        scaling,
        _key_bias(step, size, token_mask, query.dtype),
        token_mask=token_mask,
        protected=protected,
        causal=causal,
        summary_index=current,
    )
    hidden, size = merge_tokens(hidden, size, plan, step.reduction)
    token_mask = token_mask.gather(1, plan.keep_idx)
    return hidden, size, update_source(source, plan), token_mask


def run_text_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    runtime: TurboRuntime,
    token_mask: torch.Tensor,
    pooled: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run Turbo text layers, carrying `(hidden, size, source, token_mask)` from one to the next.

    Each layer is called as `layer(hidden, size, source, token_mask, pooled, step, attention_mask, **kwargs)`
    where `attention_mask` is the model's own mask (used until the first merge). With `restore_output`, the
    result is unmerged back to the input length.
    """
    batch, num_tokens, _ = hidden_states.shape
    input_mask = token_mask
    size = torch.ones(batch, num_tokens, 1, device=hidden_states.device, dtype=torch.float32)
    source = initial_source(batch, num_tokens, hidden_states.device)
    for layer, step in zip(layers, runtime.steps(num_tokens)):
        hidden_states, size, source, token_mask = layer(
            hidden_states, size, source, token_mask, pooled, step, attention_mask, **kwargs
        )
    if runtime.config.restore_output:
        hidden_states = unmerge(hidden_states, source)
        size = torch.ones(batch, num_tokens, 1, device=hidden_states.device, dtype=torch.float32)
        source, token_mask = initial_source(batch, num_tokens, hidden_states.device), input_mask
    return hidden_states, size, source, token_mask


__all__ = ["reduce_text", "run_text_layers", "text_attention_bias", "text_self_attention", "text_token_mask"]
