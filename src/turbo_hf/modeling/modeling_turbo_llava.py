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
  full causal + padding mask (`TurboLlavaTextModel` in `llama_token_reduction.py`, on `llm_token_reduction.py`). Under proportional attention
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
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask, find_first_full_attention_index
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPVisionModel
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.llava.configuration_llava import LlavaConfig
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .modeling_turbo_clip import TurboCLIPAttention, TurboCLIPEncoderLayer
from .compat import cache_kwargs, cache_of, model_output, pop_cache
from .configuration_turbo import TurboConfig, as_turbo_config
from .hub_export import TurboHubMixin
from .llama_token_reduction import MASK_IMPLEMENTATIONS, LLMReductionRequest, TurboLlavaTextModel, check_llm_reduction
from .llava_token_counts import check_feature_layer, feature_depth, tower_tokens
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import TurboModelOutputWithPooling, TurboRuntime, run_layers

CACHE_BIAS_ATTRIBUTE = "turbo_image_key_bias"


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
    >>> from turbo_hf.modeling.modeling_turbo_llava import TurboLlavaConfig, TurboLlavaForConditionalGeneration
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
    "TurboLlavaConfig",
    "TurboLlavaForConditionalGeneration",
    "TurboLlavaImageOutput",
    "TurboLlavaModel",
    "llava_runtime",
    "turbo_summary",
]
