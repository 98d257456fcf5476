"""Turbo for LLaVA-1.5 (`LlavaForConditionalGeneration`, `LlavaModel`) with a CLIP vision tower.

What changes against the stock model:

- Vision: the tower runs only the layers that feed the language model (`vision_feature_layer=-2` skips the
  last one) and Turbo merges tokens in them; the projector sees the merged tokens (N' instead of N).
- Language model: every image token stands for `size` patches. Proportional attention adds `log(size)` to
  the attention logits of every query on those image-token keys: the model builds the 4D float mask of the
  language model itself (the stock causal/padding mask plus the bias). The per-position bias is kept on the
  KV cache object (`past_key_values.turbo_image_key_bias`, shape (B, seen tokens)), so each later decoding
  step in `generate()` (which no longer sees the image) applies it to the cached image keys as well.
  `generate()` encodes the images once with `get_image_features` and expands (beam search) or slices (chunked
  prefill) the output's `pooler_output` and `deepstack_features`; the per-feature `log(size)` travels in the
  latter, so it stays aligned with the features.
- Placeholders: the text must hold N' `<image>` tokens per image; `TurboLlavaProcessor`
  (`processing_turbo_llava.py`) counts them with the same schedule code, and a mismatch raises an error
  that names both counts.

- Inside the language model (`llm_layers`, `llm_keep`; off by default): before each decoder layer `K` in
  `llm_layers` (K >= 1), every image keeps `llm_keep[i]` of its tokens. Redundancy comes from the image tokens'
  keys at layer K (`k_proj` of the normalised hidden states, before the rotary embedding, averaged over heads),
  the semantic value from the attention the text queries pay to them (the last prompt token, or all text tokens:
  `llm_text_query`), computed as a few attention rows with RoPE applied as the layer applies it (no L x L matrix,
  so SDPA keeps its kernels); `mode`, `alpha`, `alpha_scale`, `reduction` and `seed` are the shared settings.
  Removed tokens leave the sequence for layers >= K: the hidden states shrink, kept tokens keep their original
  position ids, the KV cache of layers >= K holds only kept tokens, and their masks are the kept rows/columns of the
  full causal + padding mask (`TurboLlavaTextModel`, `llm_token_reduction.py`). Under proportional attention
  (`reduction="merge"`), a merged token's `log(size)` (vision sizes times LLM merges) is its key bias in every
  later layer, prefill and decoding. The output of the prefill is restored to the input length (a merged token's
  positions get its final hidden state, pruned ones zeros), so logits line up with `input_ids`.
  Requirements: a Llama language model with eager or SDPA attention; every sample of a batch holds the same
  number of images; the whole prompt in one forward (no chunked prefill); one new token per cached forward
  afterwards. Without a KV cache (`use_cache=False`) every forward selects again with its own last token.

With `r=0` and no `llm_layers` nothing of this is used: logits and generated ids are the stock ones, bit for bit.

Not supported: a list `vision_feature_layer` while tokens merge (it concatenates hidden states of several
layers token by token, and their token counts differ), vision towers other than CLIP, `image_sizes`,
text models with sliding-window or hybrid attention when the bias is needed, and attention kernels that
take no float mask (flash attention, flex) for the bias. LLaVA-NeXT (`LlavaNextForConditionalGeneration`)
is not supported: its `pack_image_features` reshapes the features into the full patch grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, find_first_full_attention_index
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPVisionModel
from transformers.models.llama.modeling_llama import LlamaModel, repeat_kv, rotate_half
from transformers.models.llava.configuration_llava import LlavaConfig
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .adapter_clip import TurboCLIPAttention, TurboCLIPEncoderLayer
from .compat import cache_kwargs, cache_of, model_output, pop_cache
from .configuration_turbo import TurboConfig, as_turbo_config
from .hub_export import TurboHubMixin
from .llm_token_reduction import (
    STATE_ATTRIBUTE,
    ReducedCacheState,
    ReductionSettings,
    allowed_from_mask,
    finalize_mask,
    follow,
    gather_mask,
    gather_tokens,
    query_attention,
    reduce_image_tokens,
    restore_length,
    semantic_from_queries,
    stage_key_columns,
    text_queries,
)
from .merging import key_metric
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter
from .schedules import LayerCost
from .turbo_encoder import TurboModelOutputWithPooling, TurboRuntime, run_layers

CACHE_BIAS_ATTRIBUTE = "turbo_image_key_bias"
MASK_IMPLEMENTATIONS = ("eager", "sdpa")


# ----------------------------------------------------------------------------------------------------------
# Token counts: one place for the model and the processor
# ----------------------------------------------------------------------------------------------------------


def feature_depth(vision_feature_layer: int | list[int], num_layers: int) -> int:
    """Vision layers that must run to produce the selected hidden state(s) (`hidden_states[i]` is the output
    of `i` layers; negative indices count from the end, so -2 needs all layers but the last)."""
    layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    depths = []
    for layer in layers:
        depth = layer if layer >= 0 else num_layers + 1 + layer
        if not 0 <= depth <= num_layers:
            raise ValueError(
                f"`vision_feature_layer={vision_feature_layer}` is out of range for a vision tower of "
                f"{num_layers} layers."
            )
        depths.append(depth)
    return max(depths)


def clip_layer_cost(vision_config) -> LayerCost:
    """Per-token MACs of a CLIP layer from its config (what `patching.layer_cost` counts on the modules)."""
    hidden, intermediate = vision_config.hidden_size, vision_config.intermediate_size
    return LayerCost(
        attention_per_token=4 * hidden * hidden, mlp_per_token=2 * hidden * intermediate, hidden_size=hidden
    )


def tower_tokens(vision_config, height: int | None = None, width: int | None = None) -> int:
    """Tokens entering the CLIP tower ([CLS] included) for an image of the config's size (or the given one)."""
    patch = vision_config.patch_size
    height = vision_config.image_size if height is None else height
    width = vision_config.image_size if width is None else width
    return (height // patch) * (width // patch) + 1


def merged_token_count(turbo_config, num_tokens: int, num_layers: int, cost: LayerCost) -> int:
    """Tokens left after `num_layers` Turbo layers for an input of `num_tokens` tokens ([CLS] included).

    The same `TurboRuntime.schedule` the model runs, so a processor that calls this agrees with the model for
    `r`, lists, schedules, `min_tokens` and FLOP budgets (a budget resolves per input length; LLaVA inputs
    have one fixed length).
    """
    config = as_turbo_config(turbo_config)
    if config.restore_output or num_layers == 0:
        return num_tokens
    runtime = TurboRuntime(config, num_layers=num_layers, cost=cost, protect_first=True, summary_query="cls")
    return num_tokens - sum(runtime.schedule(num_tokens))


def check_feature_layer(vision_feature_layer, turbo_config) -> None:
    if not isinstance(vision_feature_layer, int) and as_turbo_config(turbo_config).removes_tokens:
        raise ValueError(
            f"`vision_feature_layer={list(vision_feature_layer)}` concatenates the hidden states of several layers "
            "token by token, but Turbo changes the number of tokens from layer to layer: use a single feature layer "
            "(an int, e.g. -2) or r=0."
        )


def image_token_count(config, turbo_config=None, height: int | None = None, width: int | None = None) -> int:
    """`<image>` placeholders per image for a (Turbo)LLaVA config: the merged token count of the vision tower
    up to the feature layer, minus [CLS] under the `"default"` feature strategy.

    Args:
        config: a `LlavaConfig` or `TurboLlavaConfig`.
        turbo_config: the Turbo settings (default: `config.turbo_config`).
        height, width: image size in pixels (default: the vision config's `image_size`).
    """
    if turbo_config is None:
        turbo_config = getattr(config, "turbo_config", None)
    check_feature_layer(config.vision_feature_layer, turbo_config)
    vision = config.vision_config
    depth = feature_depth(config.vision_feature_layer, vision.num_hidden_layers)
    count = merged_token_count(turbo_config, tower_tokens(vision, height, width), depth, clip_layer_cost(vision))
    return count - int(config.vision_feature_select_strategy == "default")


# ----------------------------------------------------------------------------------------------------------
# Config, outputs, vision tower pieces
# ----------------------------------------------------------------------------------------------------------


class TurboLlavaConfig(LlavaConfig):
    """`LlavaConfig` with a `turbo_config` (`TurboConfig`, for the vision tower) inside `config.json`.

    `turbo_config` covers the vision layers up to `vision_feature_layer` (a list `r` has one entry per such
    layer: `num_hidden_layers - 1` of them for the default -2).
    """

    model_type = "turbo_llava"
    sub_configs_defaults = {**LlavaConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_feature_layer(self.vision_feature_layer, self.turbo_config)


@dataclass
class TurboLlavaImageOutput(TurboModelOutputWithPooling):
    """What `TurboLlavaModel.get_image_features` returns.

    Args:
        last_hidden_state (`torch.Tensor` of shape `(num_images, N' + 1, hidden_size)`):
            The vision tower's hidden state at `vision_feature_layer` (merged tokens, [CLS] first).
        pooler_output (`list[torch.Tensor]`):
            The projected image features, one `(N', text_hidden_size)` tensor per image (what the language model
            receives).
        token_sizes, token_source: as in `TurboModelOutputWithPooling`, for `last_hidden_state`.
        deepstack_features (`list[list[torch.Tensor]]`, *optional*):
            `[[log_sizes_image_0, log_sizes_image_1, ...]]`, one `(N', 1)` float32 tensor per image: the `log(size)`
            attention bias of each image feature inside the language model (None when nothing merged). It uses this
            name because it is the per-placeholder field that `generate()` expands for beam search and slices for
            chunked prefill together with `pooler_output`, so the bias follows the features everywhere.
    """

    deepstack_features: list | None = None


class TurboLlavaCLIPEncoder(CLIPEncoder):
    """The CLIP encoder inside a Turbo LLaVA: its layers run through `TurboLlavaModel.get_image_features`."""

    def forward(self, *args, **kwargs):
        # Copied from transformers.models.clip.modeling_clip.CLIPEncoder.forward (v5.24)
        raise ValueError(
            "Under Turbo, the LLaVA vision tower runs through `get_image_features` of the LLaVA model (it merges "
            "tokens only in the layers that feed the language model). Call `model.get_image_features(pixel_values)`, "
            "or `turbo_hf.remove_turbo(model)` to use the stock tower."
        )


# ----------------------------------------------------------------------------------------------------------
# Language model: image tokens reduced inside the LLM (`llm_layers`, `llm_keep`)
# ----------------------------------------------------------------------------------------------------------


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
    if type(language_model) not in (LlamaModel, TurboLlavaTextModel):  # subclasses may change what the loop does
        raise ValueError(
            "Image token reduction inside the language model (`llm_layers`) supports Llama-style decoders "
            f"(`LlamaModel`: q_proj/k_proj and rotary position embeddings); this LLaVA's language model is "
            f"{type(language_model).__name__} (model_type={getattr(text_config, 'model_type', None)!r}). "
            "Remove `llm_layers`/`llm_keep` from the Turbo config."
        )
    layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"} or getattr(text_config, "sliding_window", None) is not None:
        raise ValueError(
            "Image token reduction inside the language model needs full causal attention in every layer; this "
            f"language model has {sorted(layer_types)} layers / a sliding window."
        )
    implementation = text_config._attn_implementation
    if implementation not in MASK_IMPLEMENTATIONS:
        raise ValueError(
            "Image token reduction inside the language model gives the layers after each reduction their own 4D "
            f"attention mask, which `{implementation}` cannot take. Load the model with attn_implementation='sdpa' "
            "or 'eager'."
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


@dataclass
class LLMReductionRequest:
    """What the language model needs from `TurboLlavaModel.forward` to reduce image tokens during a prefill.

    Args:
        is_image: (B, Q) bool, the image tokens of this call.
        tokens_per_image: image tokens of one image.
        log_sizes: (B, Q) float32 `log(size)` of each token after the vision tower (0 for text), or None.
        key_bias: (B, Q) the part of it that the layer-0 mask carries as a bias (proportional attention), or None.
        proportional: whether merged tokens add `log(size)` to their key column in later layers.
        config: the Turbo settings.
    """

    is_image: torch.Tensor
    tokens_per_image: int
    log_sizes: torch.Tensor | None
    key_bias: torch.Tensor | None
    proportional: bool
    config: TurboConfig


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


class _FullMask:
    """The full-length causal + padding mask of one forward as bool (B, 1, Q, KV) (call the object to get it).

    It is the layer-0 mask (`causal_mask`) when that is materialized, else (SDPA's `is_causal` shortcut) the same
    mask built without the shortcut; built before any layer updates the cache (its sizes come from the cache), and
    only when `build` is True (a decoding step whose reduced layers all take the shortcut too needs none).
    """

    def __init__(self, config, inputs_embeds, attention_mask, past_key_values, position_ids, causal_mask, build):
        self.allowed = None
        if causal_mask is not None:
            self.allowed = allowed_from_mask(causal_mask)
        elif build:
            mask = create_causal_mask(
                config=config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                allow_is_causal_skip=False,
                **cache_kwargs(past_key_values),
            )
            self.allowed = allowed_from_mask(mask)
        if self.allowed is not None:
            self.length = self.allowed.shape[-1]
        elif past_key_values is not None:
            layer = find_first_full_attention_index(past_key_values)
            self.length = int(past_key_values.get_mask_sizes(inputs_embeds.shape[1], layer)[0])
        else:
            self.length = inputs_embeds.shape[1]

    def __call__(self) -> torch.Tensor:
        if self.allowed is None:
            raise RuntimeError("The full-length mask was not built for this forward.")
        return self.allowed


class TurboLlavaTextModel(LlamaModel):
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
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        turbo_llm: LLMReductionRequest | None = None,
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
        full = _FullMask(self.config, inputs_embeds, attention_mask, past_key_values, position_ids, causal_mask, build)
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
            if turbo_llm.log_sizes is not None:
                size = turbo_llm.log_sizes.to(hidden_states.device).float().exp()[..., None]
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
                    key_bias = size[..., 0].log() if turbo_llm.proportional else None
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


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


@capture_outputs(tie_last_hidden_states=False)
def _tower_forward(
    tower, hidden: torch.Tensor, runtime: TurboRuntime, depth: int, **kwargs
) -> TurboModelOutputWithPooling:
    """The CLIP tower's layers on its embeddings, recording `hidden_states`/`attentions` as the stock tower does.

    `last_hidden_state` is the output of the first `depth` layers (Turbo merges there). When hidden states are
    asked for, the later layers run too, merging nothing (merged tokens keep their `log(size)` bias), so that
    `hidden_states` has one entry per layer like the stock tower's and `hidden_states[vision_feature_layer]` is
    the feature layer.
    """
    layers = tower.encoder.layers
    hidden, size, source = run_layers(layers[:depth], hidden, runtime)
    if kwargs.get("output_hidden_states") and depth < len(layers):
        config = runtime.config
        plain = TurboRuntime(TurboConfig(), len(layers), runtime.cost, protect_first=True, summary_query="cls")
        merged = size.shape[1] != source.shape[1]
        state, state_size, state_source = hidden, size, source
        for idx in range(depth, len(layers)):
            step = dataclasses.replace(
                plain.steps(state.shape[1])[idx],
                merged_before=merged,
                reduction=config.reduction,
                proportional_attention=config.proportional_attention,
            )
            state, state_size, state_source = layers[idx](state, state_size, state_source, step, None)
    return TurboModelOutputWithPooling(last_hidden_state=hidden, token_sizes=size, token_source=source)


class TurboLlavaModel(TurboHubMixin, LlavaModel):
    """`LlavaModel` whose vision tower merges tokens with Turbo and whose language model attends to the merged
    image tokens with proportional attention (`log(size)` bias, kept on the KV cache for decoding)."""

    config_class = TurboLlavaConfig
    _no_split_modules = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer", "LlavaMultiModalProjector"]

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        apply_turbo_from_config(self)
        check_llm_reduction(self, self.turbo_runtime.config)

    # -- vision --------------------------------------------------------------------------------------------

    def _feature_runtime(self, depth: int) -> TurboRuntime:
        runtime = self.turbo_runtime
        if runtime.num_layers == depth:
            return runtime
        if runtime.config.removes_tokens:
            raise ValueError(
                "Turbo was set up for the vision layers up to "
                f"`vision_feature_layer={self.config.vision_feature_layer}` ({runtime.num_layers} layers) and merges "
                f"tokens there; this call selects a feature layer that needs {depth} layers. Change "
                "`config.vision_feature_layer` and apply Turbo again, or use r=0."
            )
        return TurboRuntime(TurboConfig(), depth, runtime.cost, protect_first=True, summary_query="cls")

    def num_image_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """`<image>` placeholders per image this model expects (from its own Turbo runtime)."""
        vision = self.config.vision_config
        tokens = tower_tokens(vision, height, width)
        runtime = self.turbo_runtime
        if not runtime.config.restore_output:
            tokens -= sum(runtime.schedule(tokens))
        return tokens - int(self.config.vision_feature_select_strategy == "default")

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> TurboLlavaImageOutput:
        """Image features after Turbo: the tower runs only up to the feature layer, merging tokens on the way.

        Returns:
            `TurboLlavaImageOutput`: projected features per image in `pooler_output`, their `log(size)` in
            `deepstack_features[0]`.
        """
        # Copied from transformers.models.llava.modeling_llava.LlavaModel.get_image_features (v5.24)
        if image_sizes is not None:
            raise ValueError("Turbo for LLaVA supports fixed-size CLIP vision towers: `image_sizes` is not supported.")
        runtime = self.turbo_runtime
        check_feature_layer(vision_feature_layer, runtime.config)
        tower = self.vision_tower
        layers = tower.encoder.layers
        depth = feature_depth(vision_feature_layer, len(layers))
        runtime = self._feature_runtime(depth)

        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values, interpolate_pos_encoding=False))
        num_tokens = hidden.shape[1]
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        single = isinstance(vision_feature_layer, int)  # else no token is removed (checked above)
        run = _tower_forward(
            tower,
            hidden,
            runtime,
            depth,
            output_hidden_states=bool(asked) or not single,
            output_attentions=kwargs.get("output_attentions", self.config.output_attentions),
        )
        hidden, size, source = run.last_hidden_state, run.token_sizes, run.token_source
        if single:
            selected = hidden
        else:
            depths = [feature_depth(layer, len(layers)) for layer in vision_feature_layer]
            selected = torch.cat([run.hidden_states[d] for d in depths], dim=-1)

        features, feature_sizes = selected, size
        if vision_feature_select_strategy == "default":
            features, feature_sizes = features[:, 1:], feature_sizes[:, 1:]
        image_features = self.multi_modal_projector(features)

        merged = not runtime.config.restore_output and sum(runtime.schedule(num_tokens)) > 0
        return TurboLlavaImageOutput(
            last_hidden_state=hidden,
            pooler_output=list(image_features),
            token_sizes=size,
            token_source=source,
            hidden_states=run.hidden_states if asked else None,
            attentions=run.attentions,
            deepstack_features=[list(torch.log(feature_sizes.float()))] if merged else None,
        )

    # -- placeholders --------------------------------------------------------------------------------------

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        image_features: torch.Tensor,
        num_images: int | None = None,
    ) -> torch.Tensor:
        """The stock placeholder mask, with an error that names both counts when they differ."""
        # Copied from transformers.models.llava.modeling_llava.LlavaModel.get_placeholder_mask (v5.24)
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_tokens = int(special_image_mask.sum())
        n_features = image_features.shape[0]
        if n_tokens != n_features:
            num_images = num_images or 1
            per_image = n_features // num_images
            turbo = self.turbo_runtime.config
            merged = "" if not turbo.removes_tokens else f" after Turbo merging ({turbo_summary(turbo)})"
            raise ValueError(
                f"The text holds {n_tokens} image tokens ({n_tokens / num_images:g} per image) but the model gives "
                f"{n_features} image features for {num_images} image(s): {per_image} per image{merged}. "
                "Expand each `<image>` into that many tokens: use a `turbo_hf.TurboLlavaProcessor` synced with this "
                "model (`processor.sync_with(model)`, or `TurboLlavaProcessor.from_pretrained` of a folder where it "
                "was saved after syncing)."
            )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)

    # -- language model mask -------------------------------------------------------------------------------

    def _proportional_llm(self) -> bool:
        config = self.turbo_runtime.config
        return config.proportional_attention and config.reduction == "merge" and not config.restore_output

    def _language_model_mask(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        position_ids: torch.Tensor | None,
        chunk_bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The language model's attention mask with the `log(size)` bias on image-token keys.

        Returns `(mask, key_bias)`: the stock `attention_mask` and None when no key carries a bias; else a 4D
        float mask and the per-position bias of every token seen so far (B, past + Q), to keep on the cache.
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

        text_config = self.language_model.config
        implementation = text_config._attn_implementation
        if implementation not in MASK_IMPLEMENTATIONS:
            raise ValueError(
                f"Proportional attention on merged image tokens adds a float bias to the language model's mask, which "
                f"`{implementation}` cannot take. Load the model with attn_implementation='sdpa' or 'eager', or set "
                "`proportional_attention=False` in the Turbo config."
            )
        layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"} or getattr(text_config, "sliding_window", None) is not None:
            raise ValueError(
                "Proportional attention on merged image tokens is implemented for language models with full causal "
                f"attention (Llama, Vicuna); this one has {sorted(layer_types)} layers / a sliding window. "
                "Set `proportional_attention=False` in the Turbo config."
            )
        if attention_mask is not None and attention_mask.ndim == 4:
            base = attention_mask
        else:
            if position_ids is None:
                position_ids = (torch.arange(q_length, device=inputs_embeds.device) + past).unsqueeze(0)
            base = create_causal_mask(
                config=text_config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                allow_is_causal_skip=False,
                **cache_kwargs(past_key_values),
            )
        kv_length, kv_offset = base.shape[-1], 0
        if past_key_values is not None:
            _, kv_offset = past_key_values.get_mask_sizes(q_length, find_first_full_attention_index(past_key_values))
        columns = torch.arange(kv_length, device=key_bias.device) + int(kv_offset)
        known = columns < key_bias.shape[1]
        bias = torch.zeros(batch, kv_length, device=key_bias.device, dtype=torch.float32)
        bias[:, known] = key_bias[:, columns[known]]
        bias = bias[:, None, None, :].to(device=base.device, dtype=inputs_embeds.dtype)
        if base.dtype == torch.bool:
            mask = torch.where(base, bias, torch.finfo(inputs_embeds.dtype).min)
        else:
            mask = base + bias
        return mask, key_bias

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> tuple | LlavaModelOutputWithPast:
        """`LlavaModel.forward` with merged image features and their `log(size)` bias in the language model."""
        # Copied from transformers.models.llava.modeling_llava.LlavaModel.forward (v5.24), changed: Turbo image
        # features with their log(size), the language model's mask with that bias, the in-LLM reduction request.
        past_key_values = pop_cache(kwargs, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                image_sizes=image_sizes,
                return_dict=True,
                **{key: kwargs[key] for key in ("output_hidden_states", "output_attentions") if key in kwargs},
            )

        turbo = self.turbo_runtime.config
        reduce_in_llm = turbo.reduces_llm_tokens
        if reduce_in_llm and not getattr(self.turbo_runtime, "llm_checked", False):
            check_llm_reduction(self, turbo)  # a stock model patched with `apply_turbo` is checked here
            self.turbo_runtime.llm_checked = True

        image_features, chunk_bias, image_log_sizes = None, None, None
        if image_outputs is not None:
            features = image_outputs.pooler_output
            image_features = torch.cat(list(features), dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(
                input_ids, inputs_embeds=inputs_embeds, image_features=image_features, num_images=len(features)
            )
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)
            log_sizes = getattr(image_outputs, "deepstack_features", None)
            if log_sizes is not None and (reduce_in_llm or self._proportional_llm()):
                values = torch.cat([value.reshape(-1) for value in log_sizes[0]]).float()
                image_log_sizes = torch.zeros(inputs_embeds.shape[:2], device=inputs_embeds.device, dtype=torch.float32)
                image_log_sizes[special_image_mask[..., 0]] = values.to(image_log_sizes.device)
                if self._proportional_llm():
                    chunk_bias = image_log_sizes

        attention_mask, key_bias = self._language_model_mask(
            inputs_embeds, attention_mask, past_key_values, position_ids, chunk_bias
        )
        if reduce_in_llm and image_outputs is not None:
            # the vision sizes weigh LLM merges; the layers after each reduction take their own masks
            kwargs["turbo_llm"] = LLMReductionRequest(
                is_image=special_image_mask[..., 0],
                tokens_per_image=self.num_image_tokens(),
                log_sizes=image_log_sizes,
                key_bias=chunk_bias,
                proportional=self._proportional_llm(),
                config=turbo,
            )
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **cache_kwargs(past_key_values),
            **kwargs,
        )
        cache = cache_of(outputs)
        if key_bias is not None and cache is not None:
            setattr(cache, CACHE_BIAS_ATTRIBUTE, key_bias)
        return model_output(  # `image_hidden_states` up to 5.23, `image_outputs` from 5.24
            LlavaModelOutputWithPast,
            last_hidden_state=outputs.last_hidden_state,
            cache=cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_outputs=image_outputs,
        )


class TurboLlavaForConditionalGeneration(TurboHubMixin, LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` with Turbo: merged image tokens, proportional attention in the language
    model (prefill and every cached decoding step of `generate()`).

    Example:

    ```python
    >>> from turbo_hf.adapter_llava import TurboLlavaConfig, TurboLlavaForConditionalGeneration
    >>> vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    ...               image_size=32, patch_size=4)
    >>> text = dict(model_type="llama", vocab_size=120, hidden_size=32, intermediate_size=64,
    ...             num_hidden_layers=2, num_attention_heads=4)
    >>> config = TurboLlavaConfig(vision_config=vision, text_config=text, image_token_id=4, turbo_config={"r": 8})
    >>> TurboLlavaForConditionalGeneration(config).model.num_image_tokens()
    48
    ```
    """

    config_class = TurboLlavaConfig
    _no_split_modules = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer", "LlavaMultiModalProjector"]

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        apply_turbo_from_config(self)
        check_llm_reduction(self.model, self.model.turbo_runtime.config)


def turbo_summary(config) -> str:
    """A short description of the settings that set the token count."""
    settings = as_turbo_config(config).settings()
    keys = ("r", "flops_ratio", "schedule", "min_tokens", "restore_output")
    return ", ".join(f"{k}={settings[k]!r}" for k in keys if settings[k] not in (None, False, 0, "constant"))


def llava_runtime(model) -> TurboRuntime | None:
    """The Turbo runtime of a (patched) LLaVA model or of its inner `LlavaModel`; None when not patched."""
    for module in (model, getattr(model, "model", None)):
        runtime = getattr(module, "turbo_runtime", None) if module is not None else None
        if runtime is not None:
            return runtime
    return None


# ----------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------


def _llava_models(model) -> list:
    inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
    tower = inner.vision_tower
    if not isinstance(tower, CLIPVisionModel):
        raise ValueError(
            f"Turbo for LLaVA supports CLIP vision towers; this model's tower is {type(tower).__name__}."
        )
    return [inner]


def _llava_layers(llava_model):
    config = llava_model.config
    layers = llava_model.vision_tower.encoder.layers
    depth = feature_depth(config.vision_feature_layer, len(layers))
    return layers[: max(depth, 1)]


def _validate_llava(model, config) -> None:
    inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
    check_feature_layer(inner.config.vision_feature_layer, config)
    check_llm_reduction(inner, config)


LLAVA_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboLlavaForConditionalGeneration,
    "AutoModelForPreTraining": TurboLlavaForConditionalGeneration,
    "AutoModel": TurboLlavaModel,
}
TurboLlavaForConditionalGeneration.turbo_auto_classes = LLAVA_AUTO_CLASSES
TurboLlavaModel.turbo_auto_classes = LLAVA_AUTO_CLASSES

register_adapter(
    FamilyAdapter(
        name="llava",
        spatial_only=True,
        model_classes=(LlavaForConditionalGeneration, LlavaModel),
        vision_models=_llava_models,
        layers=_llava_layers,
        class_map={
            LlavaForConditionalGeneration: TurboLlavaForConditionalGeneration,
            LlavaModel: TurboLlavaModel,
            CLIPEncoder: TurboLlavaCLIPEncoder,
            CLIPEncoderLayer: TurboCLIPEncoderLayer,
            CLIPAttention: TurboCLIPAttention,
            LlamaModel: TurboLlavaTextModel,
        },
        attention_attr="self_attn",
        mlp_attr="mlp",
        tokens_for_config=lambda config: tower_tokens(config.vision_config),
        hub_classes={TurboLlavaConfig: LLAVA_AUTO_CLASSES},
        # refuses impossible `llm_layers`/`llm_keep` inside `apply_turbo`, before anything is swapped
        validate=_validate_llava,
    )
)

__all__ = [
    "LLMReductionRequest",
    "TurboLlavaConfig",
    "TurboLlavaForConditionalGeneration",
    "TurboLlavaImageOutput",
    "TurboLlavaModel",
    "TurboLlavaTextModel",
    "check_feature_layer",
    "check_llm_reduction",
    "clip_layer_cost",
    "feature_depth",
    "image_token_count",
    "llama_reduction_scores",
    "llava_runtime",
    "merged_token_count",
    "tower_tokens",
]
