"""BLIP's Turbo layers: the vision attention (fused `qkv`) and encoder layer, the text cross-attention that takes
the image tokens' `log(size)` bias, and the output classes of the BLIP heads.

BLIP's stock vision attention is eager only, written out by hand: `blip_eager_attention` is that computation
behind the attention interface, so at r=0 the Turbo attention gives exactly the stock output, and a model whose
config asks for `"sdpa"` runs the same Turbo path on SDPA.

Transformers 5.23 drops `encoder_attention_mask` inside BLIP's text cross-attention (`BlipTextAttention`
calls its `self` module without it, so `BlipTextSelfAttention` sees `None`). The image-reading cross-attention
modules therefore get `TurboBlipTextCrossAttention`, which hands the mask on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.blip.modeling_blip import (
    BlipAttention,
    BlipEncoderLayer,
    BlipForConditionalGeneration,
    BlipForConditionalGenerationModelOutput,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipImageTextMatchingModelOutput,
    BlipModel,
    BlipTextVisionModelOutput,
)
from transformers.models.blip.modeling_blip_text import BlipTextAttention

from .compat import cache_kwargs, pop_cache
from .turbo_attention import TurboAttentionMixin
from .turbo_layers import TurboPreNormLayerMixin


def blip_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager attention of the stock `BlipAttention.forward` (softmax in the input dtype), as an attention
    interface function: context (B, N, H, Dh) and weights (B, H, N, N)."""
    # Copied from transformers.models.blip.modeling_blip.BlipAttention.forward (v5.24): its attention computation
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class TurboBlipAttention(TurboAttentionMixin, BlipAttention):
    is_causal = False  # read by the SDPA interface (the stock module, eager only, does not set it)
    turbo_fused_qkv, turbo_out_proj, turbo_scaling, turbo_dropout = "qkv", "projection", "scale", "dropout"
    turbo_eager = staticmethod(blip_eager_attention)


class TurboBlipEncoderLayer(TurboPreNormLayerMixin, BlipEncoderLayer):
    # Copied from transformers.models.blip.modeling_blip.BlipEncoderLayer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    """The BLIP vision encoder layer with a Turbo step (the kit's pre-norm layer)."""


class TurboBlipTextCrossAttention(BlipTextAttention):
    """BLIP text cross-attention that applies the mask it is given.

    In Transformers 5.23 `BlipTextAttention` does not hand `encoder_attention_mask` to `BlipTextSelfAttention`,
    so any mask over the image tokens is dropped. This subclass passes it on; the Turbo models use it for the
    `log(size)` bias of merged image tokens (a float mask `(B, 1, 1, N)`, added to the logits).
    """

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
        # Copied from transformers.models.blip.modeling_blip_text.BlipTextAttention.forward (v5.24), changed:
        # `encoder_attention_mask` is passed on.
        context_layer, attention_probs = self.self(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=attention_mask,
            **cache_kwargs(pop_cache(kwargs)),
        )
        attention_output = self.output(context_layer, hidden_states)
        return attention_output, attention_probs


def image_text_tower(model: nn.Module) -> nn.Module | None:
    """The `BlipTextModel` of a BLIP model that cross-attends to the image tokens (None for the vision model)."""
    if isinstance(model, BlipForConditionalGeneration):
        return model.text_decoder.bert
    if isinstance(model, (BlipForImageTextRetrieval, BlipForQuestionAnswering)):
        return model.text_encoder
    if isinstance(model, BlipModel):
        return model.text_model
    return None


def image_cross_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The cross-attention modules that read the image tokens (the VQA answer decoder's are not among them)."""
    tower = image_text_tower(model)
    if tower is None:
        return []
    return [layer.crossattention for layer in tower.encoder.layer if hasattr(layer, "crossattention")]


def image_attention_bias(vision: nn.Module, vision_outputs) -> torch.Tensor | None:
    """The `(B, 1, 1, N)` `log(size)` bias for cross-attention over the image tokens; None when nothing merged."""
    return vision.turbo_runtime.output_bias(
        vision_outputs.token_sizes, vision_outputs.token_source, vision_outputs.last_hidden_state.dtype
    )


class TurboBlipTextBridge:
    """What the public BLIP classes share: the Turbo vision outputs, and the bias over the image tokens for their
    text cross-attention."""

    def _image_mask(self, vision_outputs) -> torch.Tensor | None:
        return image_attention_bias(self.vision_model, vision_outputs)

    def _encode_image(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **kwargs):
        """`(vision_outputs, image_embeds, image_mask)`: the vision model's outputs, its last hidden state and the
        `encoder_attention_mask` for the text cross-attention (None when nothing merged)."""
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        return vision_outputs, vision_outputs.last_hidden_state, self._image_mask(vision_outputs)

    def _read_image(self, input_ids, attention_mask, image_embeds, image_mask, **kwargs) -> torch.Tensor:
        """The text encoder's last hidden state, reading the image tokens through its cross-attention (with
        their `log(size)` bias in `image_mask`)."""
        return self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            **kwargs,
        ).last_hidden_state

    @staticmethod
    def _vision_fields(vision_outputs) -> dict:
        """The fields every BLIP head output copies from the vision outputs, Turbo's token sizes and source included."""
        return dict(
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            token_sizes=vision_outputs.token_sizes,
            token_source=vision_outputs.token_source,
        )


@dataclass
class TurboBlipForConditionalGenerationModelOutput(BlipForConditionalGenerationModelOutput):
    """The stock captioning output plus `token_sizes` (B, N', 1) and `token_source` (B, N) of the image tokens."""

    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None


@dataclass
class TurboBlipImageTextMatchingModelOutput(BlipImageTextMatchingModelOutput):
    """The stock retrieval output plus `token_sizes` and `token_source` of the image tokens."""

    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None


@dataclass
class TurboBlipTextVisionModelOutput(BlipTextVisionModelOutput):
    """The stock VQA output plus the answer decoder's `logits` and the image `token_sizes`/`token_source`."""

    logits: torch.Tensor | None = None
    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None


__all__ = [
    "TurboBlipAttention",
    "TurboBlipEncoderLayer",
    "TurboBlipForConditionalGenerationModelOutput",
    "TurboBlipImageTextMatchingModelOutput",
    "TurboBlipTextBridge",
    "TurboBlipTextCrossAttention",
    "TurboBlipTextVisionModelOutput",
    "blip_eager_attention",
    "image_cross_attention_modules",
]
