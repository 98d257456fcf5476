"""Turbo for BLIP (`BlipForConditionalGeneration`, `BlipForImageTextRetrieval`, `BlipForQuestionAnswering`,
`BlipModel`, `BlipVisionModel`).

The vision encoder merges tokens between attention and MLP; [CLS] (index 0) never merges, so everything that
reads it (ITC, `BlipModel` features) is unchanged in form. The text towers read the image tokens through
cross-attention, where merged tokens must weigh as much as the patches they replaced: the Turbo models pass a
`(B, 1, 1, N)` additive `log(size)` bias as `encoder_attention_mask`.

The vision attention, layers, text cross-attention and output classes live in `blip_layers`; only the
image-reading text towers are touched (the VQA answer decoder, which attends to the question, keeps the stock
behaviour), and the Turbo models pass no mask at all when nothing merged, so `r=0` is the stock model bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.blip.configuration_blip import BlipConfig, BlipVisionConfig
from transformers.models.blip.modeling_blip import (
    BlipAttention,
    BlipEncoderLayer,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipModel,
    BlipVisionModel,
)
from transformers.models.blip.modeling_blip_text import BlipTextAttention
from transformers.utils import can_return_tuple

from .blip_layers import (
    TurboBlipAttention,
    TurboBlipEncoderLayer,
    TurboBlipForConditionalGenerationModelOutput,
    TurboBlipImageTextMatchingModelOutput,
    TurboBlipTextBridge,
    TurboBlipTextCrossAttention,
    TurboBlipTextVisionModelOutput,
    image_cross_attention_modules,
)
from .configuration_turbo import TurboConfig
from .modeling_turbo_blip_text import BLIP_ITM_TEXT_ENCODER
from .registry import FamilyAdapter, register_adapter
from .turbo_layers import TurboModelMixin, blip_vision_forward


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


class TurboBlipVisionModel(TurboModelMixin, BlipVisionModel):
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

    # Copied from transformers.models.blip.modeling_blip.BlipVisionModel.forward (v5.24)
    forward = blip_vision_forward


_NO_SPLIT = ["BlipEncoderLayer", "TurboBlipEncoderLayer", "BlipTextEmbeddings"]


class TurboBlipForConditionalGeneration(TurboModelMixin, TurboBlipTextBridge, BlipForConditionalGeneration):
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
        vision_outputs, image_embeds, image_mask = self._encode_image(pixel_values, interpolate_pos_encoding, **kwargs)
        outputs = self.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            labels=labels,
            reduction="mean",
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return TurboBlipForConditionalGenerationModelOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            image_embeds=image_embeds,
            **self._vision_fields(vision_outputs),
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
        _, image_embeds, image_mask = self._encode_image(pixel_values, interpolate_pos_encoding)

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
            encoder_attention_mask=image_mask,
            **generate_kwargs,
        )


class TurboBlipForImageTextRetrieval(TurboModelMixin, TurboBlipTextBridge, BlipForImageTextRetrieval):
    """BLIP retrieval with Turbo in the vision encoder. The ITM head (`use_itm_head=True`) reads the image through
    the text encoder's cross-attention, with the `log(size)` bias; ITC (`use_itm_head=False`) reads the [CLS]
    embedding, which never merges.

    Transformers has no Auto class for this head: load it with `TurboBlipForImageTextRetrieval.from_pretrained`,
    or with `AutoModel.from_pretrained(..., trust_remote_code=True)` from a folder this class saved.
    """

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

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
        vision_outputs, image_embeds, image_mask = self._encode_image(pixel_values, interpolate_pos_encoding, **kwargs)

        if use_itm_head:
            question_embeds = self._read_image(input_ids, attention_mask, image_embeds, image_mask, **kwargs)
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
            **self._vision_fields(vision_outputs),
            question_embeds=question_embeds,
        )


class TurboBlipForQuestionAnswering(TurboModelMixin, TurboBlipTextBridge, BlipForQuestionAnswering):
    """BLIP VQA with Turbo in the vision encoder; the question encoder's cross-attention weighs merged image tokens
    by their size. The answer decoder (which attends to the question, not the image) is the stock one.

    The output also carries the answer decoder's `logits`.
    """

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

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
        vision_outputs, image_embeds, image_mask = self._encode_image(pixel_values, interpolate_pos_encoding, **kwargs)
        question_embeds = self._read_image(input_ids, attention_mask, image_embeds, image_mask, **kwargs)
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
            **self._vision_fields(vision_outputs),
            logits=answer_output.logits,
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
        _, image_embeds, image_mask = self._encode_image(pixel_values, interpolate_pos_encoding)
        if isinstance(input_ids, list):
            input_ids = torch.LongTensor(input_ids)
        question_embeds = self._read_image(input_ids, attention_mask, image_embeds, image_mask)
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


class TurboBlipModel(TurboModelMixin, TurboBlipTextBridge, BlipModel):
    """`BlipModel` with Turbo in its vision encoder. Image features come from [CLS] (never merged);
    `get_multimodal_features` weighs merged image tokens by their size in the text model's cross-attention."""

    config_class = TurboBlipConfig
    _no_split_modules = _NO_SPLIT

    def get_multimodal_features(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        # Copied from transformers.models.blip.modeling_blip.BlipModel.get_multimodal_features (v5.24)
        _, image_embeds, image_mask = self._encode_image(pixel_values, interpolate_pos_encoding)
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
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
