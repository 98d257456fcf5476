"""What LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video share under Turbo: a vision tower that merges tokens and
gives the full patch grid back, the placeholder check, and the family registration.

Why the grid comes back: these models pack every crop's features into the 2-D patch grid (`pack_image_features`:
unpadding, `image_newline` at the end of each row; video pooling over the grid), so the tower merges tokens in its
layers and unmerges each hidden state it returns (every merged token copied to the positions it stands for,
`merging.unmerge`). The language model then reads as many image tokens as in the stock model, and the stock
processor's count stays the model's count. A merged token that appears `size` times in the language model weighs
`size` times in its attention, which is what proportional attention gives a merged token, so the language model is
the stock one. What Turbo saves here is the vision tower's compute (attention and MLP over fewer tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPVisionModel
from transformers.models.siglip.modeling_siglip import SiglipVisionModel

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
    """

    def turbo_embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        raise NotImplementedError

    def turbo_finish(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

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


# ------------------------------------------------------------------------------------------ registration


def refuse_llm_settings(family: str) -> Callable[[nn.Module, object], None]:
    """The `validate` of these families: the in-LLM reduction (`llm_layers`) is not wired for them yet."""

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
    validate: Callable[[nn.Module, object], None],
    **adapter_kwargs,
) -> FamilyAdapter:
    """Register a LLaVA-NeXT-style family: Turbo merges in its `tower_class` vision tower (CLIP or SigLIP, anything
    else refused by name) and its model classes get `turbo_classes` (the placeholder check, the Hub classes); each
    Turbo model class of `hub_classes` saves a folder with those Auto classes."""
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

    return register_adapter(
        FamilyAdapter(
            name=name,
            model_classes=(generation_class, model_class),
            vision_models=towers,
            layers=lambda tower: tower.encoder.layers,
            class_map={**turbo_classes, tower_class: turbo_tower, **layer_classes},
            attention_attr="self_attn",
            mlp_attr="mlp",
            protect_first=protect_first,
            summary_query="cls" if protect_first else "mean",
            extra_modules=lambda model: [inner(model)] if inner(model) is not model else [],
            hub_classes=hub_classes,
            validate=validate,
            **adapter_kwargs,
        )
    )


__all__ = [
    "TurboGridCLIPVisionModel",
    "TurboGridSiglipVisionModel",
    "TurboGridTowerMixin",
    "TurboPlaceholderMixin",
    "refuse_llm_settings",
    "register_grid_family",
    "run_grid_layers",
]
