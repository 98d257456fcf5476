"""Visual tokens (images, videos) reduced inside any decoder-only language model that follows Transformers'
decoder conventions.

The stock text model's forward runs unchanged: its embeddings, rotary embedding (1-D, or Qwen2-VL's 3-D mRoPE),
causal mask and cache are built by the stock code. Only two thin wrappers are swapped in (by exact class, through
the family's `class_map`):

- `TurboDecoderModelMixin` (on the text model, e.g. `LlamaModel`, `Qwen2VLTextModel`): when the multimodal model
  hands it a reduction request (`llm_reduction_request`) or its cache holds a reduced prefill, it opens one
  `LLMRun` for the forward, passes it to every decoder layer (a keyword the stock loop forwards to the layers) and,
  after the stock forward, restores the output to the input length and keeps the `ReducedCacheState` on the cache.
- `TurboDecoderLayerMixin` (on every decoder layer): with a run, lets it rewrite the layer's inputs, then runs the
  stock layer. At a layer `K` of `llm_layers` the run scores the image tokens on the layer's own projections
  (`llm_token_scores.decoder_layer_scores`) and reduces them (`llm_token_reduction.reduce_image_tokens`); every
  layer >= K then gets the gathered hidden states, the gathered `position_embeddings` (so kept tokens keep their
  original positions, 3-D ones included), the gathered `position_ids`, and the mask of its shorter cache
  (`llm_token_masks`). Decoding steps only get those masks. A request whose tokens carry a key bias the layer-0
  mask lacks (LLaVA-NeXT-Video's merged video tokens: `log(size)`) adds it from layer 0 on, as a stage that removes
  nothing.

Without a request and without a reduced cache both wrappers call the stock forward with the stock arguments: the
computation is the stock one, bit for bit. Requirements: eager or SDPA attention, full causal attention in every
layer, the whole prompt with its images in one forward (no chunked prefill), one new token per cached forward
afterwards; inference only (the run is state shared by the layers of one forward, which gradient checkpointing's
recomputation would see twice).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .compat import CACHE_NAME, cache_of
from .configuration_turbo import as_turbo_config
from .llm_token_masks import (
    STATE_ATTRIBUTE,
    ReducedCacheState,
    allowed_from_mask,
    check_full_attention,
    finalize_mask,
    gather_mask,
    stage_key_columns,
)
from .llm_token_layout import CHUNKED
from .llm_token_reduction import (
    LLMReductionRequest,
    ReductionSettings,
    follow,
    keep_count,
    reduce_image_tokens,
    restore_length,
    step_key_bias,
)
from .llm_token_scores import decoder_layer_scores
from .turbo_encoder import LayerStep

RUN_KWARG = "turbo_llm_run"
CACHE_NAMES = ("cache", "past_key_values")  # a caller may use the deprecated name
REQUEST_ATTRIBUTE = "_turbo_llm_request"


@contextmanager
def llm_reduction_request(language_model, request: LLMReductionRequest | None):
    """Hand `request` to the next forward of a Turbo text model (called inside the block by a stock multimodal
    forward that cannot pass it as an argument)."""
    if request is None:
        yield
        return
    language_model.__dict__[REQUEST_ATTRIBUTE] = request
    try:
        yield
    finally:
        language_model.__dict__.pop(REQUEST_ATTRIBUTE, None)


def gather_sequence(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A position-embedding tensor (..., B or 1, L, D) at the per-sample positions `index` (B, K) of dim -2.

    The sequence is the next-to-last dim in every layout Transformers uses: Llama's (B, L, D) cos/sin, Qwen2-VL's
    mRoPE after recomposition (B, L, D), a leading section dim (3, B, L, D).
    """
    batch, count = index.shape
    if values.dim() < 3 or values.shape[-3] not in (1, batch):
        shape = tuple(values.shape)
        raise ValueError(f"Cannot find the batch and sequence dims of a position embedding of shape {shape}.")
    lead = values.shape[:-3]
    values = values.expand(*lead, batch, *values.shape[-2:])
    return values.gather(-2, index[..., None].expand(*lead, batch, count, values.shape[-1]))


def _gather_positions(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Position ids (..., B or 1, L) at `index` (B, K)."""
    lead = position_ids.shape[:-2]
    position_ids = position_ids.expand(*lead, *index.shape[:1], position_ids.shape[-1])
    return position_ids.gather(-1, index.expand(*lead, *index.shape))


def _full_allowed(mask: torch.Tensor | None, batch: int, q_length: int, past: int, device) -> torch.Tensor:
    """The full-length (B, 1, Q, KV) bool mask of this forward: the layer-0 mask, or the causal one it stands for
    when SDPA's `is_causal` shortcut left it None (no padding)."""
    if mask is not None:
        allowed = allowed_from_mask(mask)
        return allowed.expand(batch, *allowed.shape[1:])
    rows = torch.arange(q_length, device=device)[:, None] + past
    allowed = torch.arange(past + q_length, device=device)[None, :] <= rows
    return allowed[None, None].expand(batch, 1, -1, -1)


class LLMRun:
    """The state of one forward of a text model whose image tokens are (or were) reduced in some layers.

    A prefill (`request` given) reduces at each layer of `llm_layers` and carries the reduced sequence through the
    later layers; a decoding step (`state` from the cache) gives the layers after each reduction their masks.
    """

    def __init__(self, model, request: LLMReductionRequest | None, state: ReducedCacheState | None, cache, shape):
        self.request, self.state = request, state
        self.batch, self.q_length = shape
        self.past = int(cache.get_seq_length()) if cache is not None else 0
        self.implementation = model.config._attn_implementation
        self.full = None
        self.skip = False
        self.active = False
        self.mask = None
        if request is not None:
            if self.past:
                raise ValueError(
                    f"{CHUNKED}; this call brings image tokens to a cache that holds {self.past} tokens (a cache "
                    "continued with new images is not supported either)."
                )
            config = request.config
            self.stages = dict(zip(config.llm_layers or [], config.llm_keep or []))
            # a bias the layer-0 mask lacks is added from the first layer on (a stage that removes nothing)
            self.bias_first = request.key_bias is not None and not request.bias_in_mask
            self.settings = ReductionSettings.from_config(config)
            self.columns = torch.arange(self.q_length, device=request.is_visual.device).expand(self.batch, -1)
            self.holder = self.columns
            self.is_image = request.is_visual
            self.size = torch.ones(self.batch, self.q_length, 1, device=self.columns.device)
            if request.sizes is not None:
                self.size = request.sizes.to(self.columns.device, torch.float32)
            self.key_bias = request.key_bias
            self.original = request.item_counts
            self.counts = request.item_counts
            self.position_embeddings = self.position_ids = None
            self.saved_layers, self.saved_columns, self.saved_bias = [], [], []
        else:
            if self.q_length != 1:
                raise ValueError(
                    "This cache holds a prefill whose image tokens were reduced inside the language model: it takes "
                    f"one new token per forward (decoding), got {self.q_length} (chunked prefill and continuing a "
                    "cache with a new prompt are not supported)."
                )
            if state.batch_size != self.batch:
                raise ValueError(
                    f"The cache holds a reduced prefill for a batch of {state.batch_size}, this call has {self.batch}."
                )
            self.stages = {layer: index for index, layer in enumerate(state.layers)}

    # -- per layer -------------------------------------------------------------------------------------------

    def before_layer(self, layer, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Rewrite one decoder layer's inputs in place (`kwargs`); returns its hidden states."""
        layer_idx = layer.self_attn.layer_idx
        first_bias = self.request is not None and self.bias_first and not self.active
        if layer_idx in self.stages or first_bias:
            if self.full is None:
                mask = kwargs.get("attention_mask")
                self.skip = mask is None
                self.full = _full_allowed(mask, self.batch, self.q_length, self.past, hidden.device)
            cache = kwargs.get(CACHE_NAME)
            if self.request is not None and layer_idx in self.stages:
                hidden = self._reduce(layer, layer_idx, hidden, kwargs, cache)
            elif self.request is not None:
                self._add_bias(layer_idx, hidden, kwargs, cache)
            else:
                stage = self.stages[layer_idx]
                kv_length = int(cache.get_mask_sizes(self.q_length, layer_idx)[0])
                self.mask = self._stage_mask(
                    None, self.state.columns[stage], self.state.prefill_length, kv_length,
                    self.state.key_bias[stage], hidden.dtype,
                )
            self.active = True
        if self.active:
            kwargs["attention_mask"] = self.mask
            if self.request is not None:
                kwargs["position_embeddings"] = self.position_embeddings
                if kwargs.get("position_ids") is not None:
                    kwargs["position_ids"] = self.position_ids
        return hidden

    def _add_bias(self, layer_idx: int, hidden: torch.Tensor, kwargs: dict, cache) -> None:
        """A stage that removes nothing: the full sequence with the request's key bias in the mask."""
        self.position_embeddings = kwargs["position_embeddings"]
        self.position_ids = kwargs.get("position_ids")
        self._save_stage(layer_idx, hidden.dtype, cache)

    def _save_stage(self, layer_idx: int, dtype: torch.dtype, cache) -> None:
        """The mask of the current sequence from this layer on, and the stage kept for the decoding steps."""
        length = self.columns.shape[1]
        kv_length = int(cache.get_mask_sizes(length, layer_idx)[0]) if cache is not None else length
        self.mask = self._stage_mask(rows=self.columns.clamp_min(0), kept_columns=self.columns,
                                     prefill_length=self.q_length, kv_length=kv_length, key_bias=self.key_bias,
                                     dtype=dtype)
        self.saved_layers.append(layer_idx)
        self.saved_columns.append(self.columns)
        self.saved_bias.append(self.key_bias)

    def _reduce(self, layer, layer_idx: int, hidden: torch.Tensor, kwargs: dict, cache) -> torch.Tensor:
        if self.active:
            cos, sin = self.position_embeddings
            position_ids = self.position_ids
        else:
            cos, sin = kwargs["position_embeddings"]
            position_ids = kwargs.get("position_ids")
        rows = self.columns.clamp_min(0)
        current = gather_mask(self.full, rows, self.columns)[:, 0]
        request = self.request
        if cos.dim() != 3:
            raise ValueError(f"Scoring needs (B, L, head_dim) rotary embeddings, got {tuple(cos.shape)}.")
        metric, semantic = decoder_layer_scores(
            layer, hidden, cos.expand(self.batch, -1, -1), sin.expand(self.batch, -1, -1), current, self.key_bias,
            self.is_image, request.config.llm_text_query, self.settings.needs_semantic,
        )
        entry = self.stages[layer_idx]
        keeps = [
            [min(keep_count(entry, original), now) for original, now in zip(first, counts)]
            for first, counts in zip(self.original, self.counts)
        ]
        step = reduce_image_tokens(
            hidden, self.size, self.is_image, self.columns >= 0, self.counts, keeps, metric, semantic,
            self.settings, layer_idx,
        )
        kept = step.keep_positions.clamp_min(0)
        self.columns = torch.where(step.keep_positions >= 0, self.columns.gather(1, kept), -1)
        self.position_embeddings = (gather_sequence(cos, kept), gather_sequence(sin, kept))
        self.position_ids = None if position_ids is None else _gather_positions(position_ids, kept)
        self.holder = follow(self.holder, step.new_index)
        self.size, self.is_image, self.counts = step.size, step.is_image, step.image_counts
        self.key_bias = step_key_bias(request.bias_step, self.size)
        self._save_stage(layer_idx, hidden.dtype, cache)
        return step.hidden

    def _stage_mask(self, rows, kept_columns, prefill_length, kv_length, key_bias, dtype):
        """The mask of the layers after a reduction: rows `rows` (None: all) and the full columns of the layer's
        cache slots, from the full-length mask. None where SDPA's causal shortcut is exact: the layer-0 mask took
        it (no padding), no bias, no dead slot, and every cache slot maps to a column the full mask has."""
        full_length = self.full.shape[-1]
        unused = prefill_length + kv_length - kept_columns.shape[1] > full_length
        dead = bool((kept_columns < 0).any())
        if self.skip and key_bias is None and not unused and not dead and self.implementation == "sdpa":
            return None
        columns = stage_key_columns(kept_columns, prefill_length, kv_length, full_length)
        bias = None
        if key_bias is not None:
            extra = kv_length - key_bias.shape[1]
            bias = torch.cat([key_bias, key_bias.new_zeros(key_bias.shape[0], extra)], dim=1)
        return finalize_mask(gather_mask(self.full, rows, columns), bias, self.implementation, dtype)

    # -- after the stock forward -----------------------------------------------------------------------------

    def finish(self, outputs):
        """Restore a prefill's output to the input length and keep the reduced-cache state on its cache."""
        if self.request is None:
            return outputs
        restored = restore_length(outputs.last_hidden_state, self.holder)
        outputs.last_hidden_state = restored
        if getattr(outputs, "hidden_states", None) is not None:
            outputs.hidden_states = (*outputs.hidden_states[:-1], restored)
        cache = cache_of(outputs)
        if cache is not None and self.saved_columns:
            reduced = ReducedCacheState(
                layers=self.saved_layers,
                prefill_length=self.q_length,
                columns=self.saved_columns,
                key_bias=self.saved_bias,
            )
            setattr(cache, STATE_ATTRIBUTE, reduced)
        return outputs


class TurboDecoderModelMixin:
    """A text model (decoder stack) that reduces image tokens inside when asked (see the module docstring)."""

    def forward(self, *args, **kwargs):
        # Overrides transformers.models.llama.modeling_llama.LlamaModel.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2.modeling_qwen2.Qwen2Model.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLTextModel.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLTextModel.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextModel.forward (v5.24): a wrapper
        request = self.__dict__.pop(REQUEST_ATTRIBUTE, None)
        cache = next((kwargs[name] for name in CACHE_NAMES if kwargs.get(name) is not None), None)
        state = getattr(cache, STATE_ATTRIBUTE, None) if cache is not None else None
        if state is not None and int(cache.get_seq_length()) == 0:  # a reset or reused cache
            delattr(cache, STATE_ATTRIBUTE)
            state = None
        if request is None and state is None:
            return super().forward(*args, **kwargs)
        if args:
            raise ValueError("Pass the inputs of a Turbo language model as keyword arguments.")
        inputs = kwargs.get("inputs_embeds")
        inputs = kwargs.get("input_ids") if inputs is None else inputs
        run = LLMRun(self, request, state, cache, tuple(inputs.shape[:2]))
        return run.finish(super().forward(**kwargs, **{RUN_KWARG: run}))


class TurboDecoderLayerMixin:
    """A decoder layer whose inputs an `LLMRun` rewrites (see the module docstring)."""

    def forward(self, hidden_states, *args, **kwargs):
        # Overrides transformers.models.llama.modeling_llama.LlamaDecoderLayer.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLDecoderLayer.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLDecoderLayer.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextDecoderLayer.forward (v5.24): a wrapper
        run = kwargs.pop(RUN_KWARG, None)
        if run is not None:
            if args:
                raise ValueError("Turbo decoder layers take their inputs after `hidden_states` as keywords.")
            hidden_states = run.before_layer(self, hidden_states, kwargs)
        return super().forward(hidden_states, *args, **kwargs)


def llm_bias_step(turbo) -> LayerStep:
    """A step that removes nothing, whose `attention_bias(size)` is the core's `log(size)` rule for tokens merged
    inside the language model (for families whose language model gets unmerged image tokens: Qwen-VL, LLaVA-NeXT)."""
    settings = turbo.score_settings()
    return LayerStep(
        layer_idx=0, r=0, merged_before=True, mode=settings["mode"], alpha=settings["alpha"],
        alpha_scale=settings["alpha_scale"], reduction=settings["reduction"], seed=settings["seed"],
        protect_first=False, summary_query="mean", proportional_attention=turbo.proportional_attention,
    )


def check_llm_reduction(language_model, turbo_config, supported: tuple[type, ...], tokens_per_image=None) -> None:
    """Refuse `llm_layers`/`llm_keep` settings a language model cannot run, with a message that says why.

    Args:
        language_model: the text model (stock or Turbo).
        turbo_config: the Turbo settings.
        supported: the text-model classes the family wraps (stock and Turbo).
        tokens_per_image: image tokens of every image when the family has one count (LLaVA), else None.
    """
    config = as_turbo_config(turbo_config)
    if not config.reduces_llm_tokens:
        return
    text_config = language_model.config
    if type(language_model) not in supported:  # subclasses may change what the loop does
        names = sorted({cls.__name__ for cls in supported if not cls.__name__.startswith("Turbo")})
        raise ValueError(
            f"Image token reduction inside the language model (`llm_layers`) supports the decoders {names} here; "
            f"this model's language model is {type(language_model).__name__} "
            f"(model_type={getattr(text_config, 'model_type', None)!r}). Remove `llm_layers`/`llm_keep` from the "
            "Turbo config."
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
    if tokens_per_image is not None:
        entering = tokens_per_image
        for layer, keep in zip(config.llm_layers, config.llm_keep):
            if isinstance(keep, int) and keep > entering:
                raise ValueError(
                    f"`llm_keep={config.llm_keep}` keeps {keep} image tokens per image after decoder layer {layer}, "
                    f"but only {entering} per image enter that layer (the vision tower gives {tokens_per_image} per "
                    "image)."
                )
            entering = keep_count(keep, tokens_per_image)
    if config.reduction == "merge" and 0 in config.llm_keep:
        raise ValueError("`llm_keep=0` removes every image token: only `reduction='prune'` can do that.")


__all__ = [
    "LLMRun",
    "TurboDecoderLayerMixin",
    "TurboDecoderModelMixin",
    "check_llm_reduction",
    "gather_sequence",
    "llm_bias_step",
    "llm_reduction_request",
]
