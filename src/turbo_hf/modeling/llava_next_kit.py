"""What LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video share under Turbo: a vision tower that merges tokens and
gives the full patch grid back, the placeholder check, and the family registration.

Why the grid comes back: these models pack every crop's features into the 2-D patch grid (`pack_image_features`:
unpadding, `image_newline` at the end of each row; video pooling over the grid), so the tower merges tokens in its
layers and unmerges each hidden state it returns (every merged token copied to the positions it stands for,
`merging.unmerge`). The language model then reads as many image tokens as in the stock model, and the stock
processor's count stays the model's count. A merged token that appears `size` times in the language model weighs
`size` times in its attention, which is what proportional attention gives a merged token, so the language model is
the stock one. What Turbo saves here is the vision tower's compute (attention and MLP over fewer tokens).

All three also reduce image and video tokens inside the language model (`llm_layers`, `llm_keep`,
`TurboPackedLLMMixin`, the decoders of `llm_decoders.py`): each image's packed features, `image_newline` tokens
included, are that image's tokens, and all frames of a video are that video's. The same mixin gives LLaVA-NeXT-Video's
jointly merged video tokens (`video_keep`) their `log(size)` key bias in the language model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPVisionModel
from transformers.models.siglip.modeling_siglip import SiglipVisionModel
from transformers.utils import logging

from .llm_decoder_layers import TurboDecoderModelMixin, check_llm_reduction, llm_bias_step, llm_reduction_request
from .llm_decoders import supported_decoders
from .llm_token_masks import check_full_attention
from .llm_token_layout import visual_item_counts
from .llm_token_reduction import LLMReductionRequest, step_key_bias
from .merging import initial_source, unmerge
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import TurboRuntime

logger = logging.get_logger(__name__)


def _selected_states(asked, num_layers: int) -> tuple[set[int], int]:
    """The hidden-state indices `output_hidden_states` asks for (a flag, an index or a list of indices, as
    `select_hidden_states` passes them) and the layers that must run to produce them."""
    if asked is None or isinstance(asked, bool):
        return (set(range(num_layers + 1)) if asked else set()), num_layers
    wanted = [asked] if isinstance(asked, int) else list(asked)
    indices = {index % (num_layers + 1) for index in wanted if -(num_layers + 1) <= index <= num_layers}
    return indices, max(indices, default=num_layers)


def run_grid_layers(
    layers: nn.ModuleList, hidden: torch.Tensor, runtime: TurboRuntime, record: set[int]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Run Turbo layers (merging as the runtime's steps say) and record the hidden states at the `record` indices
    (0: the layers' input, i: the output of layer i), each unmerged to the full grid.

    Returns:
        The last merged state, its source map (B, N) and the recorded states (None where not recorded).
    """
    batch, num_tokens, _ = hidden.shape
    steps = runtime.steps(num_tokens)
    size = torch.ones(batch, num_tokens, 1, device=hidden.device, dtype=torch.float32)
    source = initial_source(batch, num_tokens, hidden.device)
    states = [hidden if 0 in record else None]
    for index, (layer, step) in enumerate(zip(layers, steps), start=1):
        hidden, size, source = layer(hidden, size, source, step, None)
        size = size.detach()  # counts, never differentiable (as in `run_layers`)
        states.append(unmerge(hidden, source) if index in record else None)
    return hidden, source, states


class TurboGridTowerMixin:
    """A CLIP or SigLIP vision tower that merges tokens with Turbo and returns the full grid: `last_hidden_state`,
    `pooler_output` and every hidden state it returns have the stock shapes.

    With no token removed (`r=0`) it gives the stock outputs bit for bit. While merging, it runs only the layers the requested
    hidden states need (`get_image_features` of these models asks for `vision_feature_layer` alone), so with the
    default `vision_feature_layer=-2` the last layer is skipped and `last_hidden_state` / `pooler_output` are taken
    from the deepest requested state; attention maps are not returned (they are over merged tokens).

    Each tower class defines the two ends of its stock forward: `turbo_embed(pixel_values, interpolate_pos_encoding)`
    (the embeddings, and CLIP's pre-layer norm) and `turbo_finish(hidden) -> (last_hidden_state, pooler_output)`.
    """

    def forward(self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool | None = False,
                **kwargs):
        # Overrides transformers.models.clip.modeling_clip.CLIPVisionModel.forward (v5.24)
        # Overrides transformers.models.siglip.modeling_siglip.SiglipVisionModel.forward (v5.24)
        runtime = self.turbo_runtime
        if kwargs.get("output_attentions", self.config.output_attentions):
            raise ValueError(
                f"`output_attentions` is not supported by the Turbo {type(self).__name__} tower of a LLaVA-NeXT-style "
                "model (its attention maps are over merged tokens); `turbo_hf.remove_turbo(model)` gives them."
            )
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        layers = self.encoder.layers
        record, depth = _selected_states(asked, len(layers))
        if not runtime.config.removes_tokens:
            depth = len(layers)  # every stock output field, bit for bit
        hidden = self.turbo_embed(pixel_values, bool(interpolate_pos_encoding))
        hidden, source, states = run_grid_layers(layers[:depth], hidden, runtime, record | {depth})
        last_hidden_state, pooler_output = self.turbo_finish(states[depth])
        states += [None] * (len(layers) + 1 - len(states))
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooler_output,
            hidden_states=tuple(state if index in record else None for index, state in enumerate(states))
            if asked else None,
        )
        return output if kwargs.get("return_dict", True) else output.to_tuple()


class TurboGridCLIPVisionModel(TurboGridTowerMixin, CLIPVisionModel):
    """The CLIP tower of a Turbo LLaVA-NeXT / LLaVA-NeXT-Video: merges tokens, returns the full grid."""

    def turbo_embed(self, pixel_values, interpolate_pos_encoding):
        # Copied from transformers.models.clip.modeling_clip.CLIPVisionModel.forward (v5.24)
        return self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding))

    def turbo_finish(self, hidden):
        return hidden, self.post_layernorm(hidden[:, 0, :])


class TurboGridSiglipVisionModel(TurboGridTowerMixin, SiglipVisionModel):
    """The SigLIP tower of a Turbo LLaVA-OneVision: merges tokens, returns the full grid."""

    def turbo_embed(self, pixel_values, interpolate_pos_encoding):
        # Copied from transformers.models.siglip.modeling_siglip.SiglipVisionModel.forward (v5.24)
        return self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def turbo_finish(self, hidden):
        last_hidden_state = self.post_layernorm(hidden)
        return last_hidden_state, self.head(last_hidden_state) if self.use_head else None


# ------------------------------------------------------------------------------------------ placeholders


class TurboPlaceholderMixin:
    """The stock placeholder masks, with an error that names both counts (the text's and the model's) and says
    which processor gives the model's count, raised before the features are scattered into the text."""

    turbo_family = "LLaVA-NeXT"

    def turbo_count_advice(self, kind: str) -> str:
        return (f"Turbo does not change the {kind}-token count of {self.turbo_family} (the vision tower gives the "
                "full patch grid back): expand the text with the stock processor of this checkpoint, whose "
                "`patch_size`, `vision_feature_select_strategy` and image grid settings match the model config.")

    def turbo_check_count(self, kind: str, tokens: int, features: int) -> None:
        """Refuse a text whose `kind` ("image", "video") token count differs from the model's feature count."""
        if tokens != features:
            raise ValueError(f"The text holds {tokens} {kind} tokens but the model gives {features} {kind} features. "
                             f"{self.turbo_count_advice(kind)}")

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features=None, video_features=None):
        # Overrides transformers.models.llava_next.modeling_llava_next.LlavaNextModel.get_placeholder_mask (v5.24)
        # Overrides transformers.models.llava_onevision.modeling_llava_onevision.LlavaOnevisionModel.get_placeholder_mask (v5.24)
        # Overrides transformers.models.llava_next_video.modeling_llava_next_video.LlavaNextVideoModel.get_placeholder_mask (v5.24)
        given = {"image": image_features, "video": video_features}
        if input_ids is not None and not torch.compiler.is_compiling():  # compiled: the stock check alone
            for kind, features in given.items():
                if features is None:
                    continue
                tokens = int((input_ids == getattr(self.config, f"{kind}_token_id")).sum())
                self.turbo_check_count(kind, tokens, features.numel() // inputs_embeds.shape[-1])
        features = {f"{kind}_features": value for kind, value in given.items() if value is not None}
        return super().get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, **features)


# ------------------------------------------------------------------------------------------ in-LLM reduction


class TurboPackedLLMMixin:
    """The inner model of LLaVA-NeXT / LLaVA-OneVision / LLaVA-NeXT-Video: hands its language model a reduction
    request (`llm_layers`) for each prompt that holds images or videos, and the `log(size)` bias of jointly merged
    video tokens (`video_keep`).

    The tokens of one image are its packed features (`pack_image_features`: the base crop, the unpadded anyres
    tiles and their `image_newline` tokens), so the newline tokens can be removed like any other, and `llm_keep` (a
    count, or a share of the item's tokens) applies per image, whatever its anyres layout. The tokens of one video
    are all its frames' pooled features (OneVision: and its closing `image_newline`), reduced jointly: the same
    content in consecutive frames merges. With `llm_layers` (or merged video tokens with a bias) the images and
    videos are encoded here (the stock way) so each item's token count is known before the language model runs;
    otherwise the stock forward runs unchanged.
    """

    def forward(self, *args, **kwargs):
        # Overrides transformers.models.llava_next.modeling_llava_next.LlavaNextModel.forward (v5.24): a wrapper
        # Overrides transformers.models.llava_onevision.modeling_llava_onevision.LlavaOnevisionModel.forward (v5.24): a wrapper
        # Overrides transformers.models.llava_next_video.modeling_llava_next_video.LlavaNextVideoModel.forward (v5.24): a wrapper
        runtime = getattr(self.vision_tower, "turbo_runtime", None)
        turbo = None if runtime is None else runtime.config
        if turbo is None or not (turbo.reduces_llm_tokens or video_bias_applies(self, turbo)):
            return super().forward(*args, **kwargs)
        if len(args) > 1:
            raise ValueError("Pass the inputs after `input_ids` of a Turbo model with `llm_layers` as keywords.")
        encoded = dict(kwargs.get("mm_encoder_outputs") or {})
        options = {key: kwargs[key] for key in ("vision_feature_layer", "vision_feature_select_strategy")
                   if kwargs.get(key) is not None}
        pixel_values, videos = kwargs.get("pixel_values"), kwargs.get("pixel_values_videos")
        if encoded.get("image") is None and pixel_values is not None and pixel_values.size(0) > 0:
            counted = {key: kwargs[key] for key in ("batch_num_images",) if kwargs.get(key) is not None}
            encoded["image"] = self.get_image_features(
                pixel_values, kwargs.get("image_sizes"), return_dict=True, **options, **counted
            )
        if encoded.get("video") is None and videos is not None and videos.size(0) > 0:
            encoded["video"] = self.get_video_features(videos, return_dict=True, **options)
        given = {key: None for key in ("pixel_values", "pixel_values_videos") if key in kwargs}
        kwargs = {**kwargs, **given, "mm_encoder_outputs": encoded or None}
        request = self._llm_request(args[0] if args else kwargs.get("input_ids"), encoded, turbo)
        with llm_reduction_request(self.language_model, request):
            return super().forward(*args, **kwargs)

    def _llm_request(self, input_ids, encoded: dict, turbo) -> LLMReductionRequest | None:
        if not encoded:
            return None
        if input_ids is None:
            raise ValueError("Image token reduction inside the language model (`llm_layers`) needs `input_ids`.")
        counts = {}
        for kind, output in encoded.items():
            if output is not None:
                token = getattr(self.config, f"{kind}_token_id")
                counts[token] = [features.shape[0] for features in output.pooler_output]
                self.turbo_check_count(kind, int((input_ids == token).sum()), sum(counts[token]))
        is_visual, items = visual_item_counts(input_ids, counts)
        bias_step = llm_bias_step(turbo)
        sizes = key_bias = None
        video_sizes = getattr(encoded.get("video"), "deepstack_features", None)
        if video_sizes is not None and video_bias_applies(self, turbo):
            sizes = torch.ones(*input_ids.shape, 1, device=input_ids.device, dtype=torch.float32)
            sizes[input_ids == self.config.video_token_id] = torch.cat(video_sizes[0]).float().to(sizes.device)
            key_bias = step_key_bias(bias_step, sizes)
        if key_bias is None and not turbo.reduces_llm_tokens:
            return None
        return LLMReductionRequest(is_visual=is_visual, item_counts=items, sizes=sizes, key_bias=key_bias,
                                   bias_step=bias_step, config=turbo)


def video_bias_applies(model: nn.Module, turbo) -> bool:
    """Whether jointly merged video tokens (`video_keep`) get their `log(size)` key bias in the language model of
    `model` (an inner model): under proportional attention with `reduction="merge"` (`merged_video_bias`), when
    the language model is a Turbo decoder (`llm_decoders`; `apply_turbo` warns when it is not)."""
    return merged_video_bias(turbo) and isinstance(model.language_model, TurboDecoderModelMixin)


def merged_video_bias(turbo) -> bool:
    """Whether the settings give jointly merged video tokens a `log(size)` key bias (the core's rule)."""
    if turbo.video_keep is None:
        return False
    return llm_bias_step(turbo).attention_bias(torch.full((1, 1, 1), 2.0), torch.float32) is not None


# ------------------------------------------------------------------------------------------ registration


def register_grid_family(
    name: str,
    generation_class: type,
    model_class: type,
    turbo_classes: dict[type, type],
    tower_class: type,
    layer_classes: dict[type, type],
    hub_classes: dict,
    protect_first: bool,
    decoders: dict[type, type],
    **adapter_kwargs,
) -> FamilyAdapter:
    """Register a LLaVA-NeXT-style family: Turbo merges in its `tower_class` vision tower (CLIP or SigLIP, anything
    else refused by name) and its model classes get `turbo_classes` (the placeholder check, the Hub classes); each
    Turbo model class of `hub_classes` saves a folder with those Auto classes. The language model's stack and layers
    are swapped for those of `decoders` (a decoder class map of `llm_decoders`), and `llm_layers` is checked
    against it."""
    for auto_classes in hub_classes.values():
        for turbo_class in auto_classes.values():
            turbo_class.turbo_auto_classes = auto_classes
    turbo_tower = {CLIPVisionModel: TurboGridCLIPVisionModel, SiglipVisionModel: TurboGridSiglipVisionModel}[tower_class]

    def inner(model: nn.Module) -> nn.Module:
        return model.model if isinstance(model, generation_class) else model

    def towers(model: nn.Module) -> list[nn.Module]:
        tower = inner(model).vision_tower
        if type(tower) not in (tower_class, turbo_tower):
            raise ValueError(f"Turbo for {generation_class.__name__} supports {tower_class.__name__} vision towers; "
                             f"this model's tower is {type(tower).__name__}.")
        return [tower]

    def extra_modules(model: nn.Module) -> list[nn.Module]:
        wrapped = [inner(model)] if inner(model) is not model else []
        return wrapped + list(inner(model).language_model.modules())

    def check_llm(model: nn.Module, config) -> None:
        language_model = inner(model).language_model
        check_llm_reduction(language_model, config, supported_decoders(decoders))
        if not merged_video_bias(config):
            return
        if type(language_model) not in supported_decoders(decoders):
            logger.warning(
                f"The jointly merged video tokens (`video_keep`) get no log(size) attention bias: this model's "
                f"language model, {type(language_model).__name__}, is not one of the decoders Turbo wraps here. "
                "Set `proportional_attention=False` to run without it knowingly."
            )
        else:
            check_full_attention(language_model.config, "The log(size) bias of merged video tokens",
                                 "Or set `proportional_attention=False`.")

    return register_adapter(
        FamilyAdapter(
            name=name,
            model_classes=(generation_class, model_class),
            vision_models=towers,
            layers=lambda tower: tower.encoder.layers,
            class_map={**turbo_classes, tower_class: turbo_tower, **layer_classes, **decoders},
            attention_attr="self_attn",
            mlp_attr="mlp",
            protect_first=protect_first,
            summary_query="cls" if protect_first else "mean",
            extra_modules=extra_modules,
            hub_classes=hub_classes,
            validate=check_llm,
            **adapter_kwargs,
        )
    )


__all__ = [
    "TurboGridCLIPVisionModel",
    "TurboGridSiglipVisionModel",
    "TurboGridTowerMixin",
    "TurboPackedLLMMixin",
    "TurboPlaceholderMixin",
    "register_grid_family",
    "run_grid_layers",
]
