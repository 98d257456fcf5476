"""Turbo for InstructBLIP (`InstructBlipForConditionalGeneration`, `InstructBlipVisionModel`).

InstructBLIP's vision classes are copies of BLIP-2's (fused `qkv`, `attention_mask=None` hard-coded), so
the Turbo attention, layer, vision forward and Q-Former inputs are the kit's, as in BLIP-2. The instruction-aware Q-Former
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

from .configuration_turbo import TurboConfig
from .registry import FamilyAdapter, register_adapter
from .turbo_attention import TurboAttentionMixin
from .turbo_layers import TurboModelMixin, TurboPreNormLayerMixin, TurboSelfPatchingMixin, blip_vision_forward
from .turbo_qformer import qformer_vision_inputs


class TurboInstructBlipConfig(InstructBlipConfig):
    """`InstructBlipConfig` with a `turbo_config` (`TurboConfig`, for the vision encoder) inside `config.json`."""

    model_type = "turbo_instructblip"
    sub_configs_defaults = {**InstructBlipConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboInstructBlipAttention(TurboAttentionMixin, InstructBlipAttention):
    turbo_fused_qkv, turbo_out_proj, turbo_scaling = "qkv", "projection", "scale"
    turbo_eager = staticmethod(eager_attention_forward)


class TurboInstructBlipEncoderLayer(TurboPreNormLayerMixin, InstructBlipEncoderLayer):
    # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipEncoderLayer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    """The InstructBLIP vision encoder layer with a Turbo step (the kit's pre-norm layer)."""


class TurboInstructBlipVisionModel(TurboSelfPatchingMixin, InstructBlipVisionModel):
    """`InstructBlipVisionModel` whose layers merge tokens; the output also carries token sizes and sources."""

    # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipVisionModel.forward (v5.24)
    forward = blip_vision_forward


class TurboInstructBlipForConditionalGeneration(TurboModelMixin, InstructBlipForConditionalGeneration):
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
        outputs, image_embeds, image_attention_mask, query_tokens = qformer_vision_inputs(
            self, pixel_values, interpolate_pos_encoding, BaseModelOutputWithVisionQformerOutputs, **kwargs
        )
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
