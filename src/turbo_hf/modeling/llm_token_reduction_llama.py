"""Image tokens reduced inside a Llama language model: the Llama half of the in-LLM reduction.

`TurboLlamaModel` is the `LlamaModel` inside a Turbo LLaVA (swapped in by `apply_turbo` when `llm_layers` is set, a
plain `LlamaModel.forward` otherwise); `llama_reduction_scores` scores the tokens at the input of a decoder layer;
`check_llm_reduction` refuses settings a LLaVA model cannot run. The selection is `llm_token_reduction.py`, the
masks `llm_token_masks.py`.

Requirements: a Llama language model with eager or SDPA attention; every sample of a batch holds the same number of
images; the whole prompt in one forward (no chunked prefill); one new token per cached forward afterwards. Without a
KV cache (`use_cache=False`) every forward selects again with its own last token.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel, repeat_kv, rotate_half
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .compat import cache_kwargs, model_output, pop_cache
from .configuration_turbo import as_turbo_config
from .llava_token_counts import image_token_count
from .llm_token_masks import (
    STATE_ATTRIBUTE,
    FullMask,
    ReducedCacheState,
    check_full_attention,
    finalize_mask,
    gather_mask,
    stage_key_columns,
)
from .llm_token_reduction import (
    LLMReductionRequest,
    ReductionSettings,
    follow,
    gather_tokens,
    query_attention,
    reduce_image_tokens,
    restore_length,
    semantic_from_queries,
    step_key_bias,
    text_queries,
)
from .merging import key_metric


def check_llm_reduction(llava_model, turbo_config) -> None:
    """Refuse `llm_layers`/`llm_keep` settings this LLaVA model cannot run, with a message that says why.

    Args:
        llava_model: the inner `LlavaModel` (stock or Turbo).
        turbo_config: the Turbo settings.
    """
    config = as_turbo_config(turbo_config)
    if not config.reduces_llm_tokens:
        return
    language_model = llava_model.language_model
    text_config = language_model.config
    if type(language_model) not in (LlamaModel, TurboLlamaModel):  # subclasses may change what the loop does
        raise ValueError(
            "Image token reduction inside the language model (`llm_layers`) supports Llama-style decoders "
            f"(`LlamaModel`: q_proj/k_proj and rotary position embeddings); this LLaVA's language model is "
            f"{type(language_model).__name__} (model_type={getattr(text_config, 'model_type', None)!r}). "
            "Remove `llm_layers`/`llm_keep` from the Turbo config."
        )
    check_full_attention(
        text_config,
        "Image token reduction inside the language model (`llm_layers`)",
        "Without it: remove `llm_layers`/`llm_keep` from the Turbo config.",
    )
    num_layers = len(language_model.layers[: text_config.num_hidden_layers])
    too_deep = [layer for layer in config.llm_layers if layer >= num_layers]
    if too_deep:
        raise ValueError(
            f"`llm_layers={config.llm_layers}` names decoder layer(s) {too_deep}, but the language model has "
            f"{num_layers} decoder layers (indices 0 to {num_layers - 1}; reductions run before layers 1 to "
            f"{num_layers - 1})."
        )
    per_image = image_token_count(llava_model.config, config)
    entering = per_image
    for layer, keep in zip(config.llm_layers, config.llm_keep):
        if keep > entering:
            raise ValueError(
                f"`llm_keep={config.llm_keep}` keeps {keep} image tokens per image after decoder layer {layer}, but "
                f"only {entering} per image enter that layer (the vision tower gives {per_image} per image)."
            )
        entering = keep
    if config.reduction == "merge" and 0 in config.llm_keep:
        raise ValueError("`llm_keep=0` removes every image token: only `reduction='prune'` can do that.")


def _rope(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding (`apply_rotary_pos_emb`) of (B, H, N, Dh) states with (B, N, Dh) cos/sin."""
    # Copied from transformers.models.llama.modeling_llama.apply_rotary_pos_emb (v5.24), for one tensor
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (states * cos) + (rotate_half(states) * sin)


def llama_reduction_scores(
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
    """Redundancy metric and semantic value of every token at the input of a Llama decoder layer.

    The metric is `key_metric` of the layer's keys (`k_proj` of the normalised hidden states, BEFORE the rotary
    embedding, so that it compares content and not position; averaged over key heads). The semantic value is the
    attention that the text queries (`"last"` real text token or `"all"` of them) pay to each token, computed as
    a few attention rows with the rotary embedding applied as the layer applies it, the layer's scaling, the
    given mask rows and key bias; no L x L matrix.

    Args:
        layer: a `LlamaDecoderLayer`.
        hidden: (B, L, C) its input; cos, sin: (B, L, Dh) rotary embedding of those tokens.
        allowed: (B, L, L) bool, which tokens each token sees (causal + padding).
        key_bias: (B, L) additive key bias of the layer's attention (log sizes), or None.
        is_image: (B, L) image tokens.

    Returns:
        `(metric, semantic)`: (B, L, Dh) and (B, L) or None.
    """
    attention = layer.self_attn
    batch, length = hidden.shape[:2]
    head_dim = attention.head_dim
    normed = layer.input_layernorm(hidden)
    keys = attention.k_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    metric = key_metric(keys)
    if not needs_semantic:
        return metric, None
    real = allowed.diagonal(dim1=1, dim2=2)
    positions, weights = text_queries(is_image, real, text_query)
    query = attention.q_proj(gather_tokens(normed, positions))
    query = query.view(batch, positions.shape[1], -1, head_dim).transpose(1, 2)
    query = _rope(query, gather_tokens(cos, positions), gather_tokens(sin, positions))
    keys = repeat_kv(_rope(keys, cos, sin), attention.num_key_value_groups)
    rows = allowed.gather(1, positions[..., None].expand(-1, -1, length))
    probs = query_attention(query, keys, attention.scaling, rows, key_bias)
    return metric, semantic_from_queries(probs, rows, weights)


class TurboLlamaModel(LlamaModel):
    """The Llama language model inside a Turbo LLaVA: reduces image tokens before the decoder layers `llm_layers`.

    Without a reduction request and without a reduced cache it IS `LlamaModel.forward` (the stock computation).

    Prefill (`turbo_llm` given, empty cache): before layer `K` of `llm_layers`, each image keeps `llm_keep` tokens
    (see `llm_token_reduction.py` for the selection). The hidden states shrink; kept tokens keep their original
    position ids (their rotary embedding is gathered, not recomputed); the mask of layers >= K is the kept rows
    and kept columns of the full causal/padding mask (plus `log(size)` of merged tokens under proportional
    attention); the cache of layers >= K receives only the kept tokens. A `ReducedCacheState` on the cache maps the
    slots of those layers to full-length columns. The output is restored to the input length: each removed
    token gets the final hidden state of the token it merged into (zeros when pruned), so logits line up with
    `input_ids`; `output_hidden_states` of layers >= K hold the reduced sequences.

    Decoding (a cache with that state): every layer runs on the new tokens; layers >= K get masks over their own
    (shorter) caches, mapped from the full-length mask the model builds for layer 0. Works with `DynamicCache`
    and `StaticCache` (both index each layer's cache by that layer's own length).
    """

    def forward(self, *args, turbo_llm: LLMReductionRequest | None = None, **kwargs):
        # Overrides transformers.models.llama.modeling_llama.LlamaModel.forward (v5.24)
        cache = pop_cache(kwargs)
        state = getattr(cache, STATE_ATTRIBUTE, None) if cache is not None else None
        if state is not None and int(cache.get_seq_length()) == 0:  # a reset or reused cache
            delattr(cache, STATE_ATTRIBUTE)
            state = None
        if turbo_llm is None and state is None:
            return super().forward(*args, **kwargs, **cache_kwargs(cache))
        if args:
            raise ValueError("Pass the inputs of a Turbo LLaVA language model as keyword arguments.")
        return self._reduced_forward(turbo_llm=turbo_llm, past_key_values=cache, **kwargs)

    def _stage_mask(self, full, rows, kept_columns, prefill_length, kv_length, key_bias, dtype, skip):
        """The mask of the layers after a reduction, from `full()`, the full-length (B, 1, Q, KV) bool mask.

        None where SDPA's causal shortcut is exact: `skip` says the layer-0 mask took it (no padding), no bias, and
        every cache slot maps to a column the full mask has.
        """
        full_length = full.length
        unused = prefill_length + kv_length - kept_columns.shape[1] > full_length
        if skip and key_bias is None and not unused and self.config._attn_implementation == "sdpa":
            return None
        columns = stage_key_columns(kept_columns, prefill_length, kv_length, full_length)
        bias = None
        if key_bias is not None:
            extra = kv_length - key_bias.shape[1]
            bias = torch.cat([key_bias, key_bias.new_zeros(key_bias.shape[0], extra)], dim=1)
        return finalize_mask(gather_mask(full(), rows, columns), bias, self.config._attn_implementation, dtype)

    @merge_with_config_defaults
    @capture_outputs
    def _reduced_forward(
        self,
        turbo_llm: LLMReductionRequest | None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        # Copied from transformers.models.llama.modeling_llama.LlamaModel.forward (v5.24), changed: image tokens
        # reduced before the `llm_layers`, masks and rotary embeddings gathered for the kept tokens.
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = int(past_key_values.get_seq_length()) if past_key_values is not None else 0
        batch, q_length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = (torch.arange(q_length, device=inputs_embeds.device) + past).unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(past_key_values),
        )
        state = None if turbo_llm is not None else getattr(past_key_values, STATE_ATTRIBUTE)
        build = state is None or any(bias is not None for bias in state.key_bias)
        full = FullMask(self.config, inputs_embeds, attention_mask, past_key_values, position_ids, causal_mask, build)
        hidden_states = inputs_embeds
        position_ids = position_ids.expand(batch, -1)
        cos, sin = self.rotary_emb(hidden_states, position_ids=position_ids)
        dtype = hidden_states.dtype

        if turbo_llm is not None:
            if past:
                raise ValueError(
                    "Image token reduction inside the language model needs the whole prompt with its images in one "
                    f"forward on an empty cache; this call brings image tokens to a cache that holds {past} tokens "
                    "(chunked prefill with `prefill_chunk_size`, or a cache continued with new images, is not "
                    "supported)."
                )
            config = turbo_llm.config
            stages = dict(zip(config.llm_layers, config.llm_keep))
            settings = ReductionSettings.from_config(config)
            columns = torch.arange(q_length, device=hidden_states.device).expand(batch, q_length)
            holder = columns
            is_image = turbo_llm.is_image.to(hidden_states.device)
            size = torch.ones(batch, q_length, 1, device=hidden_states.device, dtype=torch.float32)
            if turbo_llm.sizes is not None:
                size = turbo_llm.sizes.to(hidden_states.device, torch.float32)
            key_bias = turbo_llm.key_bias
            per_image = turbo_llm.tokens_per_image
            saved_columns, saved_bias = [], []
        else:
            if q_length != 1:
                raise ValueError(
                    "This cache holds a prefill whose image tokens were reduced inside the language model: it takes "
                    f"one new token per forward (decoding), got {q_length} (chunked prefill and continuing a cache "
                    "with a new prompt are not supported)."
                )
            if state.batch_size != batch:
                raise ValueError(
                    f"The cache holds a reduced prefill for a batch of {state.batch_size}, this call has {batch}."
                )
            stages = {layer: index for index, layer in enumerate(state.layers)}

        mask = causal_mask
        for layer_idx, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if layer_idx in stages:
                if turbo_llm is not None:
                    keep = stages[layer_idx]
                    current = gather_mask(full(), columns, columns)[:, 0]
                    metric, semantic = llama_reduction_scores(
                        decoder_layer,
                        hidden_states,
                        cos,
                        sin,
                        current,
                        key_bias,
                        is_image,
                        config.llm_text_query,
                        settings.needs_semantic,
                    )
                    if keep > per_image:
                        raise ValueError(
                            f"`llm_keep` asks for {keep} image tokens per image after decoder layer {layer_idx}, but "
                            f"only {per_image} per image enter it."
                        )
                    step = reduce_image_tokens(
                        hidden_states, size, is_image, per_image, metric, semantic, keep, settings, layer_idx
                    )
                    kept = step.keep_positions
                    hidden_states, size, is_image = step.hidden, step.size, step.is_image
                    columns = columns.gather(1, kept)
                    position_ids = position_ids.gather(1, kept)
                    cos, sin = gather_tokens(cos, kept), gather_tokens(sin, kept)
                    holder = follow(holder, step.new_index)
                    per_image = keep
                    key_bias = step_key_bias(turbo_llm.bias_step, size)
                    length = hidden_states.shape[1]
                    kv_length = length
                    if past_key_values is not None:
                        kv_length = int(past_key_values.get_mask_sizes(length, layer_idx)[0])
                    mask = self._stage_mask(
                        full, columns, columns, q_length, kv_length, key_bias, dtype, causal_mask is None
                    )
                    saved_columns.append(columns)
                    saved_bias.append(key_bias)
                else:
                    stage = stages[layer_idx]
                    kv_length = int(past_key_values.get_mask_sizes(q_length, layer_idx)[0])
                    mask = self._stage_mask(
                        full,
                        None,
                        state.columns[stage],
                        state.prefill_length,
                        kv_length,
                        state.key_bias[stage],
                        dtype,
                        causal_mask is None,
                    )
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=(cos, sin),
                position_ids=position_ids,
                use_cache=use_cache,
                **cache_kwargs(past_key_values),
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        if turbo_llm is not None:
            hidden_states = restore_length(hidden_states, holder)
            if past_key_values is not None:
                reduced = ReducedCacheState(
                    layers=list(config.llm_layers),
                    prefill_length=q_length,
                    columns=saved_columns,
                    key_bias=saved_bias,
                )
                setattr(past_key_values, STATE_ATTRIBUTE, reduced)
        return model_output(BaseModelOutputWithPast, last_hidden_state=hidden_states, cache=past_key_values)


__all__ = [
    "TurboLlamaModel",
    "check_llm_reduction",
    "llama_reduction_scores",
]
