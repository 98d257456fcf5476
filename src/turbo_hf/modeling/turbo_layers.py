"""The Turbo layer and model pieces every vision family shares: the one pre-norm layer forward, the vision mask,
BLIP-style vision forward and the constructor of the public Turbo classes.

A family names its layer's parts (`turbo_norms`, `turbo_attention`, `turbo_mlp`, and what each branch applies
before its residual); the layer runs attention through `TurboAttentionMixin`, then `LayerStep.reduce`, then the MLP.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_turbo import as_turbo_config
from .hub_export import TurboHubMixin
from .output_order import stock_field_order
from .patching import apply_turbo_from_config
from .turbo_encoder import LayerStep, TurboModelOutputWithPooling, TurboRuntime, check_attention_mask, run_layers


class TurboPreNormLayerMixin:
    """The Turbo forward of a pre-norm encoder layer: `x + A(norm1(x))`, a Turbo step, then `x + M(norm2(x))`.

    Attributes a family sets: `turbo_norms` (the two norm names), `turbo_attention`, `turbo_mlp`, and
    `turbo_attention_out` / `turbo_mlp_out`: the modules each branch applies, in order, before its residual
    (ViT's dropout, DINOv2's layer scale and drop path). Called as
    `layer(hidden_states, size, source, step, attention_mask, **kwargs)`, it returns `(hidden_states, size, source)`.
    """

    turbo_norms: tuple[str, str] = ("layer_norm1", "layer_norm2")
    turbo_attention = "self_attn"
    turbo_mlp = "mlp"
    turbo_attention_out: tuple[str, ...] = ()
    turbo_mlp_out: tuple[str, ...] = ()

    def _turbo_branch_out(self, hidden_states: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        for name in names:
            hidden_states = getattr(self, name)(hidden_states)
        return hidden_states

    def forward(self, hidden_states, size, source, step: LayerStep, attention_mask=None, **kwargs):
        # Copied from transformers.models.vit.modeling_vit.ViTLayer.forward (v5.24)
        # Copied from transformers.models.dinov2.modeling_dinov2.Dinov2Layer.forward (v5.24)
        # Copied from transformers.models.clip.modeling_clip.CLIPEncoderLayer.forward (v5.24)
        # Copied from transformers.models.siglip.modeling_siglip.SiglipEncoderLayer.forward (v5.24)
        # Copied from transformers.models.blip.modeling_blip.BlipEncoderLayer.forward (v5.24)
        # Copied from transformers.models.blip_2.modeling_blip_2.Blip2EncoderLayer.forward (v5.24)
        # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipEncoderLayer.forward (v5.24)
        attention = getattr(self, self.turbo_attention)
        bias = step.attention_bias(size, hidden_states.dtype)
        residual = hidden_states
        hidden_states = getattr(self, self.turbo_norms[0])(hidden_states)
        hidden_states, _, query, keys = attention(
            hidden_states, attention_mask=bias if bias is not None else attention_mask, **kwargs
        )
        hidden_states = self._turbo_branch_out(hidden_states, self.turbo_attention_out) + residual
        hidden_states, size, source = step.reduce(hidden_states, size, source, query, keys, attention.turbo_scale, bias)

        residual = hidden_states
        hidden_states = getattr(self, self.turbo_mlp)(getattr(self, self.turbo_norms[1])(hidden_states))
        hidden_states = self._turbo_branch_out(hidden_states, self.turbo_mlp_out) + residual
        return hidden_states, size, source


def vision_attention_mask(
    config, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, runtime: TurboRuntime
) -> torch.Tensor | None:
    """The layers' attention mask of a ViT-style encoder (ViT, DINOv2) that builds one with
    `create_bidirectional_mask`.

    A mask the caller passed is refused while tokens merge (`check_attention_mask`). Without one, the stock
    builder returns None, or (under `torch.export` / tracing) an all-True 4D mask over the input tokens: while
    tokens merge that mask is dropped (it allows everything, and it would not fit the merged lengths), without
    looking at its values, so export traces no data-dependent branch. At r=0 the stock mask is kept as built.
    """
    steps = runtime.steps(int(hidden_states.shape[1]))
    check_attention_mask(attention_mask, steps)
    mask = create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)
    return None if any(step.r for step in steps) else mask


def turbo_output(hidden_states: torch.Tensor, pooler_output, size, source) -> TurboModelOutputWithPooling:
    """The output of a Turbo vision model: the stock fields plus the token sizes and the source map."""
    return TurboModelOutputWithPooling(
        last_hidden_state=hidden_states, pooler_output=pooler_output, token_sizes=size, token_source=source
    )


@stock_field_order
@merge_with_config_defaults
@capture_outputs(tie_last_hidden_states=False)
def blip_vision_forward(
    self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool = False, **kwargs
) -> TurboModelOutputWithPooling:
    """The vision forward of BLIP, BLIP-2 and InstructBLIP (the same stock code in the three) with the Turbo layers."""
    if pixel_values is None:
        raise ValueError("You have to specify pixel_values")
    hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    hidden_states, size, source = run_layers(self.encoder.layers, hidden_states, self.turbo_runtime, **kwargs)
    last_hidden_state = self.post_layernorm(hidden_states)
    return turbo_output(last_hidden_state, self.post_layernorm(last_hidden_state[:, 0, :]), size, source)


class TurboSelfPatchingMixin:
    """A public Turbo class built from a config runs as built: it patches itself with `config.turbo_config`
    (the stock computation, r=0, when the config carries none).

    Classes on a stock config (the CLIP and SigLIP text towers) also take `turbo_config=` here, which is where
    `from_pretrained(..., turbo_config=...)` passes it when the config has no such field: it is stored on the
    config, so `save_pretrained` keeps it."""

    def __init__(self, config, *args, turbo_config=None, **kwargs) -> None:
        if turbo_config is not None:
            config.turbo_config = as_turbo_config(turbo_config)
        super().__init__(config, *args, **kwargs)
        apply_turbo_from_config(self)


class TurboModelMixin(TurboHubMixin, TurboSelfPatchingMixin):
    """A public Turbo class: patches itself from its config and saves a self-contained Hub folder."""


__all__ = [
    "TurboModelMixin",
    "TurboPreNormLayerMixin",
    "TurboSelfPatchingMixin",
    "blip_vision_forward",
    "turbo_output",
    "vision_attention_mask",
]
