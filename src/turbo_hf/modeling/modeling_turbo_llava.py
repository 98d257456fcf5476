"""Turbo for LLaVA-1.5 (`LlavaForConditionalGeneration`, `LlavaModel`) with a CLIP vision tower.

What changes against the stock model:

- Vision: the tower runs only the layers that feed the language model (`vision_feature_layer=-2` skips the last),
  Turbo merges tokens in them; the projector sees N' merged tokens.
- Language model: every image token stands for `size` patches. Proportional attention adds `log(size)` to
  the attention logits of every query on those image-token keys: the model builds the 4D float mask of the
  language model itself (the stock causal/padding mask plus the bias, `llm_token_masks.image_bias_mask`). The
  per-position bias is kept on the KV cache object, so each later decoding step in `generate()` (which no longer
  sees the image) applies it to the cached image keys as well. `generate()` encodes the images once with
  `get_image_features` and expands (beam search) or slices (chunked prefill) the output's `pooler_output` and
  `deepstack_features`; the per-feature size travels in the latter, so it stays aligned with the features. The
  bias follows the core's rule (`LayerStep.attention_bias`: proportional attention with `reduction="merge"`).
- Placeholders: the text must hold N' `<image>` tokens per image; `TurboLlavaProcessor` counts them with the
  model's count (`llava_token_counts.image_tokens`); a mismatch raises an error that names both counts.
- Inside the language model (`llm_layers`, `llm_keep`, `llm_text_query`; off by default): before each decoder
  layer `K` in `llm_layers`, every image keeps `llm_keep[i]` of its tokens, scored with the shared Turbo settings;
  removed tokens leave the sequence and the KV cache of layers >= K (`llm_decoder_layers.py`).

With `r=0` and no `llm_layers` nothing of this is used: logits and generated ids are the stock ones, bit for bit.

Not supported: a list `vision_feature_layer` while tokens merge (it concatenates hidden states of several
layers token by token, and their token counts differ), vision towers other than CLIP, `image_sizes`,
text models with sliding-window or hybrid attention when the bias is needed, and attention kernels that
take no float mask (flash attention, flex) for the bias. LLaVA-NeXT and OneVision: `modeling_turbo_llava_next.py`.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.cache_utils import Cache
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPVisionModel
from transformers.models.llava.configuration_llava import LlavaConfig
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .compat import cache_kwargs, cache_of, model_output, pop_cache
from .configuration_turbo import TurboConfig, as_turbo_config
from .configuration_turbo_llava import TurboLlavaConfig
from .hub_export import TurboHubMixin
from .llava_token_counts import (
    check_feature_layer, feature_depth, image_token_count, image_tokens, tower_runtime, tower_tokens
)
from .llava_vision_tower import TurboLlavaCLIPEncoder, TurboLlavaImageOutput, run_tower
from .llm_token_masks import CACHE_BIAS_ATTRIBUTE, image_bias_mask
from .llm_decoder_layers import check_llm_reduction, llm_reduction_request
from .llm_decoders import LLAMA_DECODER, supported_decoders
from .llm_token_reduction import LLMReductionRequest, step_key_bias
from .modeling_turbo_clip import TurboCLIPAttention, TurboCLIPEncoderLayer
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import LayerStep, TurboRuntime


# kept whole under a `device_map`: the tower's Turbo layers, and the language model's when it reduces image tokens
LLAVA_NO_SPLIT = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer", "LlavaMultiModalProjector", "TurboLlamaDecoderLayer"]


class TurboLlavaModel(TurboHubMixin, LlavaModel):
    """`LlavaModel` whose vision tower merges tokens with Turbo and whose language model attends to the merged
    image tokens with proportional attention (`log(size)` bias, kept on the KV cache for decoding)."""

    config_class = TurboLlavaConfig
    _no_split_modules = LLAVA_NO_SPLIT

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        apply_turbo_from_config(self)  # `llm_layers`/`llm_keep` are checked there (`_validate_llava`)

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
        return tower_runtime(TurboConfig(), depth, runtime.cost)

    def _bias_step(self, merged: bool) -> LayerStep:
        """A step after the tower's Turbo layers that removes nothing: its `attention_bias(size)` is the core's
        `log(size)` rule for tokens that `merged` (vision merging or an in-LLM merge)."""
        step = self.turbo_runtime.steps(tower_tokens(self.config.vision_config))[-1]
        return dataclasses.replace(step, r=0, merged_before=merged)

    def num_image_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """`<image>` placeholders per image this model expects (from its own Turbo runtime)."""
        tokens = tower_tokens(self.config.vision_config, height, width)
        return image_tokens(self.turbo_runtime, tokens, self.config.vision_feature_select_strategy)

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
            `TurboLlavaImageOutput`: projected features per image in `pooler_output`, their sizes in
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
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        single = isinstance(vision_feature_layer, int)  # else no token is removed (checked above)
        run = run_tower(
            tower,
            hidden,
            runtime,
            depth,
            self._bias_step,
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

        merged = size.shape[1] != source.shape[1]  # False under `restore_output`
        return TurboLlavaImageOutput(
            last_hidden_state=hidden,
            pooler_output=list(image_features),
            token_sizes=size,
            token_source=source,
            hidden_states=run.hidden_states if asked else None,
            attentions=run.attentions,
            deepstack_features=[list(feature_sizes.float())] if merged else None,
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
            _check_llm(self, turbo)  # a stock model patched with `apply_turbo` is checked here
            self.turbo_runtime.llm_checked = True

        image_features, sizes = None, None
        if image_outputs is not None:
            features = image_outputs.pooler_output
            image_features = torch.cat(list(features), dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(
                input_ids, inputs_embeds=inputs_embeds, image_features=image_features, num_images=len(features)
            )
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)
            feature_sizes = getattr(image_outputs, "deepstack_features", None)
            if feature_sizes is not None:
                sizes = torch.ones(*inputs_embeds.shape[:2], 1, device=inputs_embeds.device, dtype=torch.float32)
                sizes[special_image_mask[..., 0]] = torch.cat(feature_sizes[0]).float().to(sizes.device)
        bias_step = self._bias_step(merged=True)
        chunk_bias = None if sizes is None else step_key_bias(bias_step, sizes)

        attention_mask, key_bias = image_bias_mask(
            self.language_model.config, inputs_embeds, attention_mask, past_key_values, position_ids, chunk_bias
        )
        request = None
        if reduce_in_llm and image_outputs is not None:
            # the vision sizes weigh LLM merges; the layers after each reduction take their own masks
            is_image = special_image_mask[..., 0]
            per_image = self.num_image_tokens()
            request = LLMReductionRequest(
                is_visual=is_image,
                item_counts=[[per_image] * (int(count) // per_image) for count in is_image.sum(dim=1)],
                sizes=sizes,
                key_bias=chunk_bias,
                bias_step=bias_step,
                config=turbo,
                bias_in_mask=True,
            )
        with llm_reduction_request(self.language_model, request):
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
    _no_split_modules = LLAVA_NO_SPLIT

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        apply_turbo_from_config(self)  # `llm_layers`/`llm_keep` are checked there (`_validate_llava`)


def turbo_summary(config) -> str:
    """A short description of the settings that set the token count."""
    settings = as_turbo_config(config).settings()
    keys = ("r", "flops_ratio", "schedule", "min_tokens", "restore_output")
    return ", ".join(f"{k}={settings[k]!r}" for k in keys if settings[k] not in (None, False, 0, "constant"))


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


def _check_llm(llava_model, config) -> None:
    per_image = image_token_count(llava_model.config, config)
    check_llm_reduction(llava_model.language_model, config, supported_decoders(LLAMA_DECODER), per_image)


def _validate_llava(model, config) -> None:
    inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
    check_feature_layer(inner.config.vision_feature_layer, config)
    _check_llm(inner, config)


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
            **LLAMA_DECODER,
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
    "turbo_summary",
]
