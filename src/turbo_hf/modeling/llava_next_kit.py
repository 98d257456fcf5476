"""What LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video share under Turbo: a vision tower that merges tokens and
gives the full patch grid back, the placeholder check, and the family registration.

Why the grid comes back: these models pack every crop's features into the 2-D patch grid (`pack_image_features`:
unpadding, `image_newline` at the end of each row; video pooling over the grid), so the tower merges tokens in its
layers and unmerges each hidden state it returns (every merged token copied to the positions it stands for,
`merging.unmerge`). The language model then reads as many image tokens as in the stock model, and the stock
processor's count stays the model's count. A merged token that appears `size` times in the language model weighs
`size` times in its attention, which is what proportional attention gives a merged token, so the language model is
the stock one. What Turbo saves here is the vision tower's compute (attention and MLP over fewer tokens).

LLaVA-NeXT and LLaVA-OneVision also reduce image tokens inside the language model (`llm_layers`, `llm_keep`,
`TurboPackedLLMMixin`, the decoders of `llm_decoders.py`): each image's packed features, `image_newline` tokens
included, are that image's tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPVisionModel
from transformers.models.siglip.modeling_siglip import SiglipVisionModel

from .llm_decoder_layers import check_llm_reduction, llm_bias_step, llm_reduction_request
from .llm_decoders import supported_decoders
from .llm_token_reduction import LLMReductionRequest, split_image_counts
from .merging import initial_source, unmerge
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import TurboRuntime


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
                count = features.numel() // inputs_embeds.shape[-1]
                if tokens != count:
                    raise ValueError(f"The text holds {tokens} {kind} tokens but the model gives {count} {kind} "
                                     f"features. {self.turbo_count_advice(kind)}")
        features = {f"{kind}_features": value for kind, value in given.items() if value is not None}
        return super().get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, **features)


# ------------------------------------------------------------------------------------------ in-LLM reduction


class TurboPackedLLMMixin:
    """The inner model of LLaVA-NeXT / LLaVA-OneVision: hands its language model a reduction request (`llm_layers`)
    for each prompt that holds images.

    The image tokens of one image are its packed features (`pack_image_features`: the base crop, the unpadded anyres
    tiles and their `image_newline` tokens): the newline tokens count as image tokens of that image, so they can be
    removed like any other, and `llm_keep` (a count, or a share of that image's tokens) applies per image, whatever
    its anyres layout. With `llm_layers` the images are encoded here (the stock way) so each image's token count is
    known before the language model runs; without it the stock forward runs unchanged.
    """

    def forward(self, *args, **kwargs):
        # Overrides transformers.models.llava_next.modeling_llava_next.LlavaNextModel.forward (v5.24): a wrapper
        # Overrides transformers.models.llava_onevision.modeling_llava_onevision.LlavaOnevisionModel.forward (v5.24): a wrapper
        runtime = getattr(self.vision_tower, "turbo_runtime", None)
        turbo = None if runtime is None else runtime.config
        if turbo is None or not turbo.reduces_llm_tokens:
            return super().forward(*args, **kwargs)
        if len(args) > 1:
            raise ValueError("Pass the inputs after `input_ids` of a Turbo model with `llm_layers` as keywords.")
        encoded = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        pixel_values = kwargs.get("pixel_values")
        if encoded is None and pixel_values is not None and pixel_values.size(0) > 0:
            options = ("vision_feature_layer", "vision_feature_select_strategy", "batch_num_images")
            encoded = self.get_image_features(
                pixel_values, kwargs.get("image_sizes"), return_dict=True,
                **{key: kwargs[key] for key in options if kwargs.get(key) is not None},
            )
            kwargs = {**kwargs, "pixel_values": None, "mm_encoder_outputs": {"image": encoded}}
        if kwargs.get("pixel_values_videos") is not None or (kwargs.get("mm_encoder_outputs") or {}).get("video"):
            raise ValueError(
                "`llm_layers` reduces image tokens; this call brings videos, which the in-LLM reduction does not "
                "reduce. Remove `llm_layers`/`llm_keep` from the Turbo config for videos."
            )
        request = self._llm_request(args[0] if args else kwargs.get("input_ids"), encoded, turbo)
        with llm_reduction_request(self.language_model, request):
            return super().forward(*args, **kwargs)

    def _llm_request(self, input_ids, encoded, turbo) -> LLMReductionRequest | None:
        if encoded is None:
            return None
        if input_ids is None:
            raise ValueError("Image token reduction inside the language model (`llm_layers`) needs `input_ids`.")
        is_image = input_ids == self.config.image_token_id
        counts = [features.shape[0] for features in encoded.pooler_output]
        return LLMReductionRequest(
            is_image=is_image, image_counts=split_image_counts(is_image, counts), sizes=None, key_bias=None,
            bias_step=llm_bias_step(turbo), config=turbo,
        )


# ------------------------------------------------------------------------------------------ registration


def refuse_llm_settings(family: str) -> Callable[[nn.Module, object], None]:
    """The `validate` of a family whose in-LLM reduction (`llm_layers`) is not wired (LLaVA-NeXT-Video)."""

    def validate(model: nn.Module, config) -> None:
        if config.reduces_llm_tokens:
            raise ValueError(
                f"`llm_layers`/`llm_keep` are not yet supported for {family} ({type(model).__name__}); Turbo merges "
                "inside its vision tower (`r`, `flops_ratio`). Use `llm_layers=None`."
            )

    return validate


def register_grid_family(
    name: str,
    generation_class: type,
    model_class: type,
    turbo_classes: dict[type, type],
    tower_class: type,
    layer_classes: dict[type, type],
    hub_classes: dict,
    protect_first: bool,
    validate: Callable[[nn.Module, object], None] | None = None,
    decoders: dict[type, type] | None = None,
    **adapter_kwargs,
) -> FamilyAdapter:
    """Register a LLaVA-NeXT-style family: Turbo merges in its `tower_class` vision tower (CLIP or SigLIP, anything
    else refused by name) and its model classes get `turbo_classes` (the placeholder check, the Hub classes); each
    Turbo model class of `hub_classes` saves a folder with those Auto classes. With `decoders` (a decoder class map
    of `llm_decoders`) the language model's stack and layers are swapped too and `llm_layers` is checked against
    it; else `validate` refuses what the family does not support."""
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
        return wrapped + (list(inner(model).language_model.modules()) if decoders else [])

    def check_llm(model: nn.Module, config) -> None:
        check_llm_reduction(inner(model).language_model, config, supported_decoders(decoders))

    return register_adapter(
        FamilyAdapter(
            name=name,
            model_classes=(generation_class, model_class),
            vision_models=towers,
            layers=lambda tower: tower.encoder.layers,
            class_map={**turbo_classes, tower_class: turbo_tower, **layer_classes, **(decoders or {})},
            attention_attr="self_attn",
            mlp_attr="mlp",
            protect_first=protect_first,
            summary_query="cls" if protect_first else "mean",
            extra_modules=extra_modules,
            hub_classes=hub_classes,
            validate=check_llm if decoders else validate,
            **adapter_kwargs,
        )
    )


__all__ = [
    "TurboGridCLIPVisionModel",
    "TurboGridSiglipVisionModel",
    "TurboGridTowerMixin",
    "TurboPackedLLMMixin",
    "TurboPlaceholderMixin",
    "refuse_llm_settings",
    "register_grid_family",
    "run_grid_layers",
]
