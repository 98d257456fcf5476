"""Turbo for BLIP-2 (`Blip2ForConditionalGeneration`, `Blip2ForImageTextRetrieval`, `Blip2VisionModel`).

The ViT-g vision encoder merges tokens; the Q-Former is the stock one. What changes downstream:

- the vision attention uses a fused `qkv` projection and the stock code calls the attention interface with
  `attention_mask=None` hard-coded; the Turbo attention passes the `log(size)` bias as the attention mask
  itself, which every implementation honours (eager adds it, SDPA takes it as a float mask, flex as a score
  mask), whereas `position_bias=` is silently ignored by the eager path;
- the Q-Former cross-attends to the merged image tokens: once tokens have merged it gets the same
  `log(size)` bias as a 4D float `encoder_attention_mask` (B, 1, 1, N'), so a merged token weighs as much as
  the patches it holds. When nothing merged it gets the stock all-ones mask, bit for bit the stock model;
- `generate()` and the retrieval `forward()` call the vision model and the Q-Former themselves in the stock
  code: they are overridden to route through the same Turbo path as `get_image_features`.

The attention, layer, vision forward and Q-Former inputs are the kit's (`turbo_attention`, `turbo_layers`,
`turbo_qformer`), shared with InstructBLIP, whose vision classes are copies of these.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.blip_2.configuration_blip_2 import Blip2Config
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2Attention,
    Blip2EncoderLayer,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2ImageTextMatchingModelOutput,
    Blip2PreTrainedModel,
    Blip2VisionModel,
    BaseModelOutputWithVisionQformerOutputs,
    eager_attention_forward,
)
from transformers.utils.generic import can_return_tuple

from .configuration_turbo import TurboConfig
from .registry import FamilyAdapter, register_adapter
from .turbo_attention import TurboAttentionMixin
from .turbo_layers import TurboModelMixin, TurboPreNormLayerMixin, TurboSelfPatchingMixin, blip_vision_forward
from .turbo_qformer import qformer_image_inputs, qformer_vision_inputs


class TurboBlip2Config(Blip2Config):
    """`Blip2Config` with a `turbo_config` (`TurboConfig`, for the vision encoder) inside `config.json`."""

    model_type = "turbo_blip_2"
    sub_configs_defaults = {**Blip2Config.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboBlip2Attention(TurboAttentionMixin, Blip2Attention):
    turbo_fused_qkv, turbo_out_proj, turbo_scaling = "qkv", "projection", "scale"
    turbo_eager = staticmethod(eager_attention_forward)


class TurboBlip2EncoderLayer(TurboPreNormLayerMixin, Blip2EncoderLayer):
    # Copied from transformers.models.blip_2.modeling_blip_2.Blip2EncoderLayer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    """The BLIP-2 vision encoder layer (CLIP's pre-norm layout) with a Turbo step (the kit's pre-norm layer)."""


class TurboBlip2VisionModel(TurboSelfPatchingMixin, Blip2VisionModel):
    """`Blip2VisionModel` whose layers merge tokens; the output also carries token sizes and sources."""

    # Copied from transformers.models.blip_2.modeling_blip_2.Blip2VisionModel.forward (v5.24)
    forward = blip_vision_forward


_NO_SPLIT = [*Blip2PreTrainedModel._no_split_modules, "TurboBlip2Attention", "TurboBlip2EncoderLayer"]


class TurboBlip2ForConditionalGeneration(TurboModelMixin, Blip2ForConditionalGeneration):
    """`Blip2ForConditionalGeneration` whose vision encoder merges tokens with Turbo.

    The Q-Former cross-attends to the merged tokens with the `log(size)` bias; `forward`, `get_image_features`
    and `generate` all take that path.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf import TurboConfig
    >>> from turbo_hf.modeling.modeling_turbo_blip2 import TurboBlip2Config, TurboBlip2ForConditionalGeneration
    >>> config = TurboBlip2Config(
    ...     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    ...                        image_size=32, patch_size=4),
    ...     qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    ...                         cross_attention_frequency=1, vocab_size=99),
    ...     text_config=dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2,
    ...                      num_attention_heads=2, vocab_size=99, word_embed_proj_dim=32),
    ...     num_query_tokens=4, image_token_index=98, turbo_config=TurboConfig(r=8))
    >>> model = TurboBlip2ForConditionalGeneration(config).eval()
    >>> features = model.get_image_features(pixel_values=torch.randn(1, 3, 32, 32))
    >>> features.vision_outputs.last_hidden_state.shape[1], features.pooler_output.shape
    (49, torch.Size([1, 4, 32]))
    ```
    """

    config_class = TurboBlip2Config
    _no_split_modules = _NO_SPLIT

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = False, **kwargs
    ) -> BaseModelOutputWithVisionQformerOutputs:
        """The stock `get_image_features`, with the Q-Former cross-attending to merged tokens with the bias.

        `vision_outputs` carries `token_sizes` and `token_source`.
        """
        # Copied from transformers.models.blip_2.modeling_blip_2.Blip2ForConditionalGeneration.get_image_features (v5.24)
        outputs, image_embeds, image_attention_mask, query_tokens = qformer_vision_inputs(
            self, pixel_values, interpolate_pos_encoding, BaseModelOutputWithVisionQformerOutputs, **kwargs
        )
        qformer_outputs = self.qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
            return_dict=True,
        )
        outputs.qformer_outputs = qformer_outputs
        query_output = qformer_outputs[0]
        if query_output.dtype != image_embeds.dtype:
            query_output = query_output.to(image_embeds.dtype)
        outputs.pooler_output = self.language_projection(query_output)
        return outputs

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """The stock `generate`, with the image features from the Turbo `get_image_features`."""
        # Copied from transformers.models.blip_2.modeling_blip_2.Blip2ForConditionalGeneration.generate (v5.24)
        if hasattr(self, "hf_device_map"):
            self._preprocess_accelerate()
        batch_size = pixel_values.shape[0]
        language_model_inputs = self.get_image_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
        ).pooler_output

        if inputs_embeds is None:
            if input_ids is None:
                image_tokens = [self.config.image_token_index] * self.config.num_query_tokens
                start_tokens = image_tokens + [self.config.text_config.bos_token_id]
                input_ids = torch.tensor([start_tokens], dtype=torch.long, device=language_model_inputs.device)
                input_ids = input_ids.repeat(batch_size, 1)
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds)
        language_model_inputs = language_model_inputs.to(inputs_embeds.device, inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, language_model_inputs)

        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if not self.language_model.config.is_encoder_decoder:
            inputs["input_ids"] = input_ids
        return self.language_model.generate(**inputs, **generate_kwargs)


class TurboBlip2ForImageTextRetrieval(TurboModelMixin, Blip2ForImageTextRetrieval):
    """`Blip2ForImageTextRetrieval` (ITM through the Q-Former, and ITC) with Turbo in the vision encoder.

    Both heads read the Q-Former, which cross-attends to the merged image tokens with the `log(size)` bias.
    """

    config_class = TurboBlip2Config
    _no_split_modules = _NO_SPLIT

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        use_image_text_matching_head: bool | None = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | Blip2ImageTextMatchingModelOutput:
        """The stock forward; the vision outputs also carry `token_sizes` and `token_source`."""
        # Copied from transformers.models.blip_2.modeling_blip_2.Blip2ForImageTextRetrieval.forward (v5.24)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        image_embeds, image_attention_mask = qformer_image_inputs(self.vision_model, vision_outputs, self.qformer)
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)

        if use_image_text_matching_head:
            if self.config.image_token_index is not None:
                input_ids = input_ids[:, self.config.num_query_tokens :]
            else:
                query_attention_mask = torch.ones(
                    query_tokens.size()[:-1], dtype=torch.long, device=query_tokens.device
                )
                attention_mask = torch.cat([query_attention_mask, attention_mask], dim=1)
            query_embeds = self.embeddings(input_ids=input_ids, query_embeds=query_tokens)
            text_outputs = self.qformer(
                query_embeds=query_embeds,
                query_length=query_tokens.shape[1],
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_attention_mask,
                return_dict=return_dict,
            )
            text_embeds = text_outputs[0] if not return_dict else text_outputs.last_hidden_state
            text_embeds = text_embeds.to(dtype=self.itm_head.weight.dtype)
            output = self.itm_head(text_embeds[:, : query_tokens.size(1), :])
            logits_per_image = output.mean(dim=1)
            logits_per_text = logits_per_image.t()
        else:
            query_outputs = self.qformer(
                query_embeds=query_tokens,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_attention_mask,
                return_dict=return_dict,
            )
            image_embeds = query_outputs[0] if not return_dict else query_outputs.last_hidden_state
            image_embeds = image_embeds.to(dtype=self.vision_projection.weight.dtype)
            if self.config.image_token_index is not None:
                input_ids = input_ids[:, self.config.num_query_tokens :]
                attention_mask = attention_mask[:, self.config.num_query_tokens :]
            query_embeds = self.embeddings(input_ids=input_ids)
            text_outputs = self.qformer(
                query_embeds=query_embeds, query_length=0, attention_mask=attention_mask, return_dict=return_dict
            )
            question_embeds = text_outputs[0] if not return_dict else text_outputs.last_hidden_state
            question_embeds = question_embeds.to(dtype=self.text_projection.weight.dtype)
            image_embeds = nn.functional.normalize(self.vision_projection(image_embeds), dim=-1)
            text_embeds = nn.functional.normalize(self.text_projection(question_embeds[:, 0, :]), dim=-1)
            logits_per_image = torch.matmul(image_embeds, text_embeds.t())
            logits_per_image, _ = logits_per_image.max(dim=1)
            logits_per_text = logits_per_image.t()

        if not return_dict:
            return (
                logits_per_image,
                logits_per_text,
                text_embeds,
                image_embeds,
                text_outputs,
                vision_outputs.to_tuple(),
            )
        return Blip2ImageTextMatchingModelOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


BLIP2_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboBlip2ForConditionalGeneration,
    "AutoModelForVisualQuestionAnswering": TurboBlip2ForConditionalGeneration,
    "AutoModelForZeroShotImageClassification": TurboBlip2ForImageTextRetrieval,
}
TurboBlip2ForConditionalGeneration.turbo_auto_classes = BLIP2_AUTO_CLASSES
TurboBlip2ForImageTextRetrieval.turbo_auto_classes = BLIP2_AUTO_CLASSES


def _vision_models(model: nn.Module) -> list[nn.Module]:
    return [model if isinstance(model, Blip2VisionModel) else model.vision_model]


register_adapter(
    FamilyAdapter(
        name="blip_2",
        model_classes=(Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2VisionModel),
        vision_models=_vision_models,
        layers=lambda vision: vision.encoder.layers,
        class_map={
            Blip2ForConditionalGeneration: TurboBlip2ForConditionalGeneration,
            Blip2ForImageTextRetrieval: TurboBlip2ForImageTextRetrieval,
            Blip2VisionModel: TurboBlip2VisionModel,
            Blip2EncoderLayer: TurboBlip2EncoderLayer,
            Blip2Attention: TurboBlip2Attention,
        },
        attention_attr="self_attn",
        mlp_attr="mlp",
        hub_classes={TurboBlip2Config: BLIP2_AUTO_CLASSES},
    )
)

__all__ = [
    "TurboBlip2Config",
    "TurboBlip2ForConditionalGeneration",
    "TurboBlip2ForImageTextRetrieval",
    "TurboBlip2VisionModel",
]
