"""Turbo for BLIP (`BlipForConditionalGeneration`, `BlipForImageTextRetrieval`, `BlipForQuestionAnswering`,
`BlipModel`, `BlipVisionModel`).

The vision encoder merges tokens between attention and MLP; [CLS] (index 0) never merges, so everything that
reads it (ITC, `BlipModel` features) is unchanged in form. The text towers read the image tokens through
cross-attention, where merged tokens must weigh as much as the patches they replaced: the Turbo models pass a
`(B, 1, 1, N)` additive `log(size)` bias as `encoder_attention_mask`.

Transformers 5.23 drops `encoder_attention_mask` inside BLIP's text cross-attention (`BlipTextAttention`
calls its `self` module without it, so `BlipTextSelfAttention` sees `None`). The image-reading cross-attention
modules therefore get `TurboBlipTextCrossAttention`, which hands the mask on. Only the text towers that attend
to the image are touched (the VQA answer decoder, which attends to the question, keeps the stock behaviour),
and the Turbo models pass no mask at all when nothing merged, so `r=0` is the stock model bit for bit.

BLIP supports only eager attention in Transformers 5.23 (no SDPA, no flash attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.blip.configuration_blip import BlipConfig, BlipVisionConfig
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
    BlipVisionModel,
)
from transformers.models.blip.modeling_blip_text import BlipTextAttention
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .compat import cache_kwargs, pop_cache
from .configuration_turbo import TurboConfig
from .hub_export import TurboHubMixin
from .modeling_turbo_blip_text import BLIP_ITM_TEXT_ENCODER
from .output_order import stock_field_order
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import LayerStep, TurboModelOutputWithPooling, run_layers


class TurboBlipConfig(BlipConfig):
    """`BlipConfig` with a `turbo_config` (`TurboConfig`, for the vision encoder) inside `config.json`."""

    model_type = "turbo_blip"
    sub_configs_defaults = {**BlipConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboBlipVisionConfig(BlipVisionConfig):
    """`BlipVisionConfig` with a `turbo_config` (`TurboConfig`) inside `config.json`."""

    model_type = "turbo_blip_vision_model"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


# ----------------------------------------------------------------------------------------------- vision side


class TurboBlipAttention(BlipAttention):
    """The stock fused-`qkv` eager attention, plus an optional additive logits bias; also returns the per-head
    queries and keys (B, H, N, Dh) that Turbo scores."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        # Copied from transformers.models.blip.modeling_blip.BlipAttention.forward (v5.24)
        bsz, tgt_len, embed_dim = hidden_states.size()
        mixed_qkv = (
            self.qkv(hidden_states)
            .reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        query_states, key_states, value_states = mixed_qkv[0], mixed_qkv[1], mixed_qkv[2]
        attention_scores = torch.matmul(query_states, key_states.transpose(-1, -2))
        attention_scores = attention_scores * self.scale
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_states).permute(0, 2, 1, 3)
        new_context_layer_shape = context_layer.size()[:-2] + (self.embed_dim,)
        context_layer = context_layer.reshape(new_context_layer_shape)
        output = self.projection(context_layer)
        return output, attention_probs, query_states, key_states


class TurboBlipEncoderLayer(BlipEncoderLayer):
    def forward(self, hidden_states, size, source, step: LayerStep, attention_mask=None, **kwargs):
        # Copied from transformers.models.blip.modeling_blip.BlipEncoderLayer.forward (v5.24)
        bias = step.attention_bias(size, hidden_states.dtype)
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        hidden_states, _, query, keys = self.self_attn(
            hidden_states=hidden_states, attention_mask=bias if bias is not None else attention_mask, **kwargs
        )
        hidden_states = hidden_states + residual
        hidden_states, size, source = step.reduce(hidden_states, size, source, query, keys, self.self_attn.scale, bias)

        residual = hidden_states
        hidden_states = self.layer_norm2(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = hidden_states + residual
        return hidden_states, size, source


class TurboBlipVisionModel(TurboHubMixin, BlipVisionModel):
    """`BlipVisionModel` whose layers merge tokens with Turbo; the output also carries token sizes and sources.

    Example:

    ```python
    >>> from turbo_hf import TurboConfig
    >>> from turbo_hf.modeling.modeling_turbo_blip import TurboBlipVisionConfig, TurboBlipVisionModel
    >>> config = TurboBlipVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                intermediate_size=64, image_size=32, patch_size=8, turbo_config=TurboConfig(r=2))
    >>> TurboBlipVisionModel(config).turbo_runtime.schedule(17)
    [2, 2]
    ```
    """

    config_class = TurboBlipVisionConfig
    _no_split_modules = ["BlipEncoderLayer", "TurboBlipEncoderLayer"]

    def __init__(self, config: BlipVisionConfig):
        super().__init__(config)
        apply_turbo_from_config(self)

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool = False, **kwargs
    ) -> TurboModelOutputWithPooling:
        # Copied from transformers.models.blip.modeling_blip.BlipVisionModel.forward (v5.24)
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states, size, source = run_layers(self.encoder.layers, hidden_states, self.turbo_runtime, **kwargs)
        last_hidden_state = self.post_layernorm(hidden_states)
        pooled_output = self.post_layernorm(last_hidden_state[:, 0, :])
        return TurboModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=pooled_output, token_sizes=size, token_source=source
        )


# ------------------------------------------------------------------------------------------------- text side


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
    """What the public BLIP classes share: the bias over the image tokens for their text cross-attention."""

    def _image_mask(self, vision_outputs) -> torch.Tensor | None:
        return image_attention_bias(self.vision_model, vision_outputs)


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


_NO_SPLIT = ["BlipEncoderLayer", "TurboBlipEncoderLayer", "BlipTextEmbeddings"]


class TurboBlipForConditionalGeneration(TurboHubMixin, TurboBlipTextBridge, BlipForConditionalGeneration):
    """BLIP captioning with Turbo in the vision encoder; the text decoder's cross-attention weighs merged image
    tokens by their size.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf import TurboConfig
    >>> from turbo_hf.modeling.modeling_turbo_blip import TurboBlipConfig, TurboBlipForConditionalGeneration
    >>> tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    >>> config = TurboBlipConfig(text_config=dict(vocab_size=99, bos_token_id=97, sep_token_id=98, **tower),
    ...                          vision_config=dict(image_size=32, patch_size=8, **tower),
    ...                          turbo_config=TurboConfig(r=2))
    >>> model = TurboBlipForConditionalGeneration(config).eval()
    >>> model.generate(pixel_values=torch.randn(1, 3, 32, 32), max_new_tokens=3).shape
    torch.Size([1, 4])
    ```
    """

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

    def __init__(self, config: BlipConfig):
        super().__init__(config)
        apply_turbo_from_config(self)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> TurboBlipForConditionalGenerationModelOutput:
        # Copied from transformers.models.blip.modeling_blip.BlipForConditionalGeneration.forward (v5.24)
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        image_embeds = vision_outputs.last_hidden_state
        outputs = self.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_mask(vision_outputs),
            labels=labels,
            reduction="mean",
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return TurboBlipForConditionalGenerationModelOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            image_embeds=image_embeds,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            token_sizes=vision_outputs.token_sizes,
            token_source=vision_outputs.token_source,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """The stock `generate`, with the image tokens' `log(size)` bias in the decoder's cross-attention."""
        # Copied from transformers.models.blip.modeling_blip.BlipForConditionalGeneration.generate (v5.24)
        batch_size = pixel_values.shape[0]
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        image_embeds = vision_outputs.last_hidden_state

        if isinstance(input_ids, list):
            input_ids = torch.LongTensor(input_ids)
        elif input_ids is None:
            input_ids = (
                torch.LongTensor([[self.decoder_input_ids, self.config.text_config.eos_token_id]])
                .repeat(batch_size, 1)
                .to(image_embeds.device)
            )
        input_ids = input_ids.clone()  # the stock method writes [BOS] into the caller's tensor
        input_ids[:, 0] = self.config.text_config.bos_token_id
        attention_mask = attention_mask[:, :-1] if attention_mask is not None else None

        return self.text_decoder.generate(
            input_ids=input_ids[:, :-1],
            eos_token_id=self.config.text_config.sep_token_id,
            pad_token_id=self.config.text_config.pad_token_id,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_mask(vision_outputs),
            **generate_kwargs,
        )


class TurboBlipForImageTextRetrieval(TurboHubMixin, TurboBlipTextBridge, BlipForImageTextRetrieval):
    """BLIP retrieval with Turbo in the vision encoder. The ITM head (`use_itm_head=True`) reads the image through
    the text encoder's cross-attention, with the `log(size)` bias; ITC (`use_itm_head=False`) reads the [CLS]
    embedding, which never merges.

    Transformers has no Auto class for this head: load it with `TurboBlipForImageTextRetrieval.from_pretrained`,
    or with `AutoModel.from_pretrained(..., trust_remote_code=True)` from a folder this class saved.
    """

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

    def __init__(self, config: BlipConfig):
        super().__init__(config)
        apply_turbo_from_config(self)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        use_itm_head: bool | None = True,
        attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> TurboBlipImageTextMatchingModelOutput:
        # Copied from transformers.models.blip.modeling_blip.BlipForImageTextRetrieval.forward (v5.24)
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        image_embeds = vision_outputs.last_hidden_state

        if use_itm_head:
            question_embeds = self.text_encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=self._image_mask(vision_outputs),
                **kwargs,
            ).last_hidden_state
            output = self.itm_head(question_embeds[:, 0, :])
        else:
            question_embeds = self.text_encoder(
                input_ids=input_ids, attention_mask=attention_mask, **kwargs
            ).last_hidden_state
            image_feat = nn.functional.normalize(self.vision_proj(image_embeds[:, 0, :]), dim=-1)
            text_feat = nn.functional.normalize(self.text_proj(question_embeds[:, 0, :]), dim=-1)
            output = image_feat @ text_feat.t()

        return TurboBlipImageTextMatchingModelOutput(
            itm_score=output,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            question_embeds=question_embeds,
            token_sizes=vision_outputs.token_sizes,
            token_source=vision_outputs.token_source,
        )


class TurboBlipForQuestionAnswering(TurboHubMixin, TurboBlipTextBridge, BlipForQuestionAnswering):
    """BLIP VQA with Turbo in the vision encoder; the question encoder's cross-attention weighs merged image tokens
    by their size. The answer decoder (which attends to the question, not the image) is the stock one.

    The output also carries the answer decoder's `logits`.
    """

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

    def __init__(self, config: BlipConfig):
        super().__init__(config)
        apply_turbo_from_config(self)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> TurboBlipTextVisionModelOutput:
        # Copied from transformers.models.blip.modeling_blip.BlipForQuestionAnswering.forward (v5.24)
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "Either `decoder_input_ids` or `labels` should be passed when calling `forward` with"
                " `BlipForQuestionAnswering`. if you are training the model make sure that `labels` is passed, if you"
                " are using the model for inference make sure that `decoder_input_ids` is passed or call `generate`"
            )
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        image_embeds = vision_outputs.last_hidden_state
        question_embeds = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_mask(vision_outputs),
            **kwargs,
        )[0]
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = labels  # already shifted right, as in the stock model
        answer_output = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=attention_mask,
            labels=labels,
            reduction="mean",
            **kwargs,
        )
        decoder_loss = answer_output.loss.mean() if labels is not None else None
        return TurboBlipTextVisionModelOutput(
            loss=decoder_loss,
            image_embeds=image_embeds,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            logits=answer_output.logits,
            token_sizes=vision_outputs.token_sizes,
            token_source=vision_outputs.token_source,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """The stock `generate`, with the image tokens' `log(size)` bias in the question encoder's cross-attention."""
        # Copied from transformers.models.blip.modeling_blip.BlipForQuestionAnswering.generate (v5.24)
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        image_embeds = vision_outputs.last_hidden_state
        if isinstance(input_ids, list):
            input_ids = torch.LongTensor(input_ids)
        question_embeds = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self._image_mask(vision_outputs),
            return_dict=False,
        )[0]
        question_attention_mask = torch.ones(
            question_embeds.size()[:-1], dtype=torch.long, device=question_embeds.device
        )
        bos_ids = torch.full(
            (question_embeds.size(0), 1), fill_value=self.decoder_start_token_id, device=question_embeds.device
        )
        return self.text_decoder.generate(
            input_ids=bos_ids,
            eos_token_id=self.config.text_config.sep_token_id,
            pad_token_id=self.config.text_config.pad_token_id,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=question_attention_mask,
            **generate_kwargs,
        )


class TurboBlipModel(TurboHubMixin, TurboBlipTextBridge, BlipModel):
    """`BlipModel` with Turbo in its vision encoder. Image features come from [CLS] (never merged);
    `get_multimodal_features` weighs merged image tokens by their size in the text model's cross-attention."""

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

    def __init__(self, config: BlipConfig):
        super().__init__(config)
        apply_turbo_from_config(self)

    def get_multimodal_features(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        # Copied from transformers.models.blip.modeling_blip.BlipModel.get_multimodal_features (v5.24)
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=vision_outputs.last_hidden_state,
            encoder_attention_mask=self._image_mask(vision_outputs),
        )
        return self.text_projection(text_outputs[1])


BLIP_AUTO_CLASSES = {
    "AutoModel": TurboBlipModel,
    "AutoModelForZeroShotImageClassification": TurboBlipModel,
    "AutoModelForImageTextToText": TurboBlipForConditionalGeneration,
    "AutoModelForVisualQuestionAnswering": TurboBlipForQuestionAnswering,
}
VISION_AUTO_CLASSES = {"AutoModel": TurboBlipVisionModel}
TurboBlipModel.turbo_auto_classes = {
    "AutoModel": TurboBlipModel,
    "AutoModelForZeroShotImageClassification": TurboBlipModel,
}
TurboBlipForConditionalGeneration.turbo_auto_classes = {
    "AutoModelForImageTextToText": TurboBlipForConditionalGeneration,
}
TurboBlipForQuestionAnswering.turbo_auto_classes = {
    "AutoModelForVisualQuestionAnswering": TurboBlipForQuestionAnswering,
}
# no Auto class maps to BLIP retrieval: only its own folders name it (remote code), it is not registered
TurboBlipForImageTextRetrieval.turbo_auto_classes = {"AutoModel": TurboBlipForImageTextRetrieval}
TurboBlipVisionModel.turbo_auto_classes = VISION_AUTO_CLASSES

register_adapter(
    FamilyAdapter(
        name="blip",
        model_classes=(
            BlipForConditionalGeneration,
            BlipForImageTextRetrieval,
            BlipForQuestionAnswering,
            BlipModel,
            BlipVisionModel,
        ),
        vision_models=lambda model: [model if isinstance(model, BlipVisionModel) else model.vision_model],
        layers=lambda vision: vision.encoder.layers,
        class_map={
            BlipForConditionalGeneration: TurboBlipForConditionalGeneration,
            BlipForImageTextRetrieval: TurboBlipForImageTextRetrieval,
            BlipForQuestionAnswering: TurboBlipForQuestionAnswering,
            BlipModel: TurboBlipModel,
            BlipVisionModel: TurboBlipVisionModel,
            BlipEncoderLayer: TurboBlipEncoderLayer,
            BlipAttention: TurboBlipAttention,
            BlipTextAttention: TurboBlipTextCrossAttention,
        },
        extra_modules=image_cross_attention_modules,
        extra_encoders=(BLIP_ITM_TEXT_ENCODER,),
        attention_attr="self_attn",
        mlp_attr="mlp",
        hub_classes={TurboBlipConfig: BLIP_AUTO_CLASSES, TurboBlipVisionConfig: VISION_AUTO_CLASSES},
    )
)
