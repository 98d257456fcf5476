"""The CLIP vision tower inside a Turbo LLaVA: it runs through `TurboLlavaModel.get_image_features`, only up to
the feature layer, and returns the merged features with their sizes (`TurboLlavaImageOutput`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.utils.output_capturing import capture_outputs

from .turbo_encoder import LayerStep, TurboModelOutputWithPooling, TurboRuntime, run_layers


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
            `[[sizes_image_0, sizes_image_1, ...]]`, one `(N', 1)` float32 tensor per image: the patches each image
            feature stands for, which set its `log(size)` attention bias inside the language model (None when
            nothing merged). It uses this name because it is the per-placeholder field that `generate()` expands for
            beam search and slices for chunked prefill together with `pooler_output`, so the sizes follow the
            features everywhere.
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


@capture_outputs(tie_last_hidden_states=False)
def run_tower(
    tower, hidden: torch.Tensor, runtime: TurboRuntime, depth: int, bias_step: Callable[[bool], LayerStep], **kwargs
) -> TurboModelOutputWithPooling:
    """The CLIP tower's layers on its embeddings, recording `hidden_states`/`attentions` as the stock tower does.

    `last_hidden_state` is the output of the first `depth` layers (Turbo merges there). When hidden states are
    asked for, the later layers run too with `bias_step(merged)`, merging nothing (merged tokens keep their
    `log(size)` bias), so that `hidden_states` has one entry per layer like the stock tower's and
    `hidden_states[vision_feature_layer]` is the feature layer.
    """
    layers = tower.encoder.layers
    hidden, size, source = run_layers(layers[:depth], hidden, runtime)
    if kwargs.get("output_hidden_states") and depth < len(layers):
        step = bias_step(size.shape[1] != source.shape[1])
        state, state_size, state_source = hidden, size, source
        for layer in layers[depth:]:
            state, state_size, state_source = layer(state, state_size, state_source, step, None)
    return TurboModelOutputWithPooling(last_hidden_state=hidden, token_sizes=size, token_source=source)


__all__ = ["TurboLlavaCLIPEncoder", "TurboLlavaImageOutput", "run_tower"]
