"""Turbo for the text towers of CLIP (`CLIPTextModel`, `CLIPTextModelWithProjection`) and SigLIP
(`SiglipTextModel`).

The token a head pools is protected and is the summary query of the semantic value: CLIP's EOS token,
SigLIP's last token. CLIP's tower is causal: a token only merges into a later one and the causal mask is
kept over the merged tokens, so no token sees its future. Padding never merges with real tokens (right
padding). For a `CLIPModel` or `SiglipModel`, patch the text tower on its own:
`apply_turbo(model.text_model, TurboConfig(...))`.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer, SiglipTextModel
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .modeling_turbo_clip import TurboCLIPAttention
from .compat import cache_kwargs
from .modeling_turbo_siglip import TurboSiglipAttention
from .output_order import stock_field_order
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import LayerStep
from .turbo_layers import TurboSelfPatchingMixin
from .turbo_text import reduce_text, run_text_layers, text_attention_bias, text_token_mask


def text_tower_layer_forward(
    layer, hidden_states, size, source, token_mask, pooled, step: LayerStep, attention_mask=None, **kwargs
):
    """A pre-norm CLIP/SigLIP layer over text tokens with a Turbo step between attention and MLP."""
    causal = layer.causal_text
    bias = text_attention_bias(step, size, token_mask, hidden_states.dtype, causal=causal)
    residual = hidden_states
    hidden_states = layer.layer_norm1(hidden_states)
    hidden_states, _, query, keys = layer.self_attn(
        hidden_states=hidden_states, attention_mask=bias if bias is not None else attention_mask, **kwargs
    )
    hidden_states = residual + hidden_states
    hidden_states, size, source, token_mask = reduce_text(
        step, hidden_states, size, source, token_mask, query, keys, layer.self_attn.scale,
        pooled=pooled, causal=causal,
    )
    residual = hidden_states
    hidden_states = layer.layer_norm2(hidden_states)
    hidden_states = residual + layer.mlp(hidden_states)
    return hidden_states, size, source, token_mask


class TurboCLIPTextEncoderLayer(CLIPEncoderLayer):
    causal_text = True
    # Copied from transformers.models.clip.modeling_clip.CLIPEncoderLayer.forward (v5.24)
    forward = text_tower_layer_forward


class TurboSiglipTextEncoderLayer(SiglipEncoderLayer):
    causal_text = False
    # Copied from transformers.models.siglip.modeling_siglip.SiglipEncoderLayer.forward (v5.24)
    forward = text_tower_layer_forward


def _embedded_text(model, input_ids, position_ids, attention_mask):
    """The stock text towers' first lines: ids flattened to (B, N), their embeddings, and the real-token mask."""
    if input_ids is None:
        raise ValueError("You have to specify input_ids")
    input_ids = input_ids.view(-1, input_ids.shape[-1])
    hidden_states = model.embeddings(input_ids=input_ids, position_ids=position_ids)
    return input_ids, hidden_states, text_token_mask(attention_mask, hidden_states)


def _pooled_token(output_hidden, source, pooled):
    index = source.gather(1, pooled[:, None])[:, 0]
    return output_hidden[torch.arange(output_hidden.shape[0], device=output_hidden.device), index]


class TurboCLIPTextModel(TurboSelfPatchingMixin, CLIPTextModel):
    """`CLIPTextModel` whose layers merge tokens with Turbo (causal, EOS protected); built from a config, it takes
    its settings from `config.turbo_config` (none: r=0, the stock computation)."""

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs) -> BaseModelOutputWithPooling:
        # Copied from transformers.models.clip.modeling_clip.CLIPTextModel.forward (v5.24)
        input_ids, hidden_states, token_mask = _embedded_text(self, input_ids, position_ids, attention_mask)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask, **cache_kwargs(None)
        )
        kwargs.pop("is_causal", None)
        ids = input_ids.to(dtype=torch.int, device=hidden_states.device)
        pooled = ids.argmax(dim=-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).int().argmax(dim=-1)
        hidden_states, size, source, token_mask = run_text_layers(
            self.encoder.layers, hidden_states, self.turbo_runtime, token_mask, pooled.long(), mask,
            is_causal=True, **kwargs,
        )
        last_hidden_state = self.final_layer_norm(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=_pooled_token(last_hidden_state, source, pooled.long())
        )


class TurboSiglipTextModel(TurboSelfPatchingMixin, SiglipTextModel):
    """`SiglipTextModel` whose layers merge tokens with Turbo (the pooled last token protected); built from a
    config, it takes its settings from `config.turbo_config` (none: r=0, the stock computation)."""

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs) -> BaseModelOutputWithPooling:
        # Copied from transformers.models.siglip.modeling_siglip.SiglipTextModel.forward (v5.24)
        input_ids, hidden_states, token_mask = _embedded_text(self, input_ids, position_ids, attention_mask)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        pooled = torch.full((hidden_states.shape[0],), hidden_states.shape[1] - 1, device=hidden_states.device)
        hidden_states, size, source, token_mask = run_text_layers(
            self.encoder.layers, hidden_states, self.turbo_runtime, token_mask, pooled, mask, **kwargs
        )
        last_hidden_state = self.final_layer_norm(hidden_states)
        pooled_output = self.head(_pooled_token(last_hidden_state, source, pooled))
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


def _text_tokens(config) -> int:
    return config.max_position_embeddings


def _register_text_tower(name: str, model_classes: tuple, vision_models, class_map: dict) -> None:
    """A text tower's adapter: every token may merge except the pooled one (protected by the layers themselves)."""
    register_adapter(
        FamilyAdapter(
            name=name,
            spatial_only=True,
            model_classes=model_classes,
            vision_models=vision_models,
            layers=lambda tower: tower.encoder.layers,
            class_map=class_map,
            attention_attr="self_attn",
            mlp_attr="mlp",
            protect_first=False,
            tokens_for_config=_text_tokens,
        )
    )


_register_text_tower(
    "clip-text",
    (CLIPTextModel, CLIPTextModelWithProjection),
    lambda model: [model if isinstance(model, CLIPTextModel) else model.text_model],
    {CLIPTextModel: TurboCLIPTextModel, CLIPEncoderLayer: TurboCLIPTextEncoderLayer, CLIPAttention: TurboCLIPAttention},
)
_register_text_tower(
    "siglip-text",
    (SiglipTextModel,),
    lambda model: [model],
    {
        SiglipTextModel: TurboSiglipTextModel,
        SiglipEncoderLayer: TurboSiglipTextEncoderLayer,
        SiglipAttention: TurboSiglipAttention,
    },
)
