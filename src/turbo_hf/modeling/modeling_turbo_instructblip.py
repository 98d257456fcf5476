"""Turbo for InstructBLIP (`InstructBlipForConditionalGeneration`, `InstructBlipVisionModel`).

InstructBLIP's vision classes are copies of BLIP-2's (fused `qkv`, `attention_mask=None` hard-coded), so
the Turbo attention, layer and vision forward come from `modeling_turbo_blip2`. The instruction-aware Q-Former
cross-attends to the merged image tokens with the `log(size)` bias as a 4D float `encoder_attention_mask`
(the stock all-ones mask when nothing merged). `generate()` goes through `get_image_features`, the one
method overridden on the public class.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.instructblip.configuration_instructblip import InstructBlipConfig
from transformers.models.instructblip.modeling_instructblip import (
    BaseModelOutputWithVisionQformerOutputs,
    InstructBlipAttention,
    InstructBlipEncoderLayer,
    InstructBlipForConditionalGeneration,
    InstructBlipPreTrainedModel,
    InstructBlipVisionModel,
    eager_attention_forward,
)
from transformers.utils.generic import can_return_tuple

from .modeling_turbo_blip2 import fused_qkv_attention, qformer_image_inputs, turbo_vision_forward
from .modeling_turbo_clip import pre_norm_layer_forward
from .configuration_turbo import TurboConfig
from .hub_export import TurboHubMixin
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter


class TurboInstructBlipConfig(InstructBlipConfig):
    """`InstructBlipConfig` with a `turbo_config` (`TurboConfig`, for the vision encoder) inside `config.json`."""

    model_type = "turbo_instructblip"
    sub_configs_defaults = {**InstructBlipConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboInstructBlipAttention(InstructBlipAttention):
    def forward(self, hidden_states, attention_mask=None, **kwargs):
        # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipAttention.forward (v5.24)
        return fused_qkv_attention(self, hidden_states, attention_mask, eager_attention_forward, **kwargs)


class TurboInstructBlipEncoderLayer(InstructBlipEncoderLayer):
    # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipEncoderLayer.forward (v5.24)
    forward = pre_norm_layer_forward


class TurboInstructBlipVisionModel(InstructBlipVisionModel):
    """`InstructBlipVisionModel` whose layers merge tokens; the output also carries token sizes and sources."""

    # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipVisionModel.forward (v5.24)
    forward = turbo_vision_forward


class TurboInstructBlipForConditionalGeneration(TurboHubMixin, InstructBlipForConditionalGeneration):
    """`InstructBlipForConditionalGeneration` whose vision encoder merges tokens with Turbo.

    The Q-Former (queries and instruction) cross-attends to the merged tokens with the `log(size)` bias;
    `forward` and `generate` both take that path through `get_image_features`.
    """

    config_class = TurboInstructBlipConfig
    _no_split_modules = [
        *InstructBlipPreTrainedModel._no_split_modules,
        "TurboInstructBlipAttention",
        "TurboInstructBlipEncoderLayer",
    ]

    def __init__(self, config: InstructBlipConfig):
        super().__init__(config)
        apply_turbo_from_config(self)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs,
    ) -> BaseModelOutputWithVisionQformerOutputs:
        """The stock `get_image_features`, with the Q-Former cross-attending to merged tokens with the bias.

        `vision_outputs` carries `token_sizes` and `token_source`.
        """
        # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipForConditionalGeneration.get_image_features (v5.24)
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        outputs = BaseModelOutputWithVisionQformerOutputs(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=vision_outputs.pooler_output,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            vision_outputs=vision_outputs,
        )
        image_embeds, image_attention_mask = qformer_image_inputs(self.vision_model, vision_outputs, self.qformer)
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_attention_mask = torch.ones(query_tokens.size()[:-1], dtype=torch.long, device=image_embeds.device)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        qformer_attention_mask = qformer_attention_mask.to(query_attention_mask.device)
        qformer_attention_mask = torch.cat([query_attention_mask, qformer_attention_mask], dim=1)
        qformer_outputs = self.qformer(
            input_ids=qformer_input_ids,
            attention_mask=qformer_attention_mask,
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
            return_dict=True,
            **kwargs,
        )
        outputs.qformer_outputs = qformer_outputs
        query_output = qformer_outputs[0][:, : query_tokens.size(1), :]
        outputs.pooler_output = self.language_projection(query_output)
        return outputs


INSTRUCTBLIP_AUTO_CLASSES = {"AutoModelForImageTextToText": TurboInstructBlipForConditionalGeneration}
TurboInstructBlipForConditionalGeneration.turbo_auto_classes = INSTRUCTBLIP_AUTO_CLASSES


def _vision_models(model: nn.Module) -> list[nn.Module]:
    return [model if isinstance(model, InstructBlipVisionModel) else model.vision_model]


register_adapter(
    FamilyAdapter(
        name="instructblip",
        model_classes=(InstructBlipForConditionalGeneration, InstructBlipVisionModel),
        vision_models=_vision_models,
        layers=lambda vision: vision.encoder.layers,
        class_map={
            InstructBlipForConditionalGeneration: TurboInstructBlipForConditionalGeneration,
            InstructBlipVisionModel: TurboInstructBlipVisionModel,
            InstructBlipEncoderLayer: TurboInstructBlipEncoderLayer,
            InstructBlipAttention: TurboInstructBlipAttention,
        },
        attention_attr="self_attn",
        mlp_attr="mlp",
        hub_classes={TurboInstructBlipConfig: INSTRUCTBLIP_AUTO_CLASSES},
    )
)

__all__ = [
    "TurboInstructBlipConfig",
    "TurboInstructBlipForConditionalGeneration",
    "TurboInstructBlipVisionModel",
]
