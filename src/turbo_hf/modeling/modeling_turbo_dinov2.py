"""Turbo for DINOv2 (`Dinov2Model`, `Dinov2ForImageClassification`)."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.dinov2.configuration_dinov2 import Dinov2Config
from transformers.models.dinov2.modeling_dinov2 import (
    Dinov2Attention,
    Dinov2Encoder,
    Dinov2ForImageClassification,
    Dinov2Layer,
    Dinov2Model,
    eager_attention_forward,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_turbo import TurboConfig
from .merging import unmerge
from .registry import FamilyAdapter, register_adapter
from .turbo_attention import TurboAttentionMixin
from .turbo_encoder import TurboModelOutputWithPooling, TurboRuntime, run_layers
from .turbo_layers import TurboModelMixin, TurboPreNormLayerMixin, vision_attention_mask


class TurboDinov2Config(Dinov2Config):
    """`Dinov2Config` with a `turbo_config` (`TurboConfig`) that travels inside `config.json`."""

    model_type = "turbo_dinov2"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboDinov2Attention(TurboAttentionMixin, Dinov2Attention):
    turbo_eager = staticmethod(eager_attention_forward)


class TurboDinov2Layer(TurboPreNormLayerMixin, Dinov2Layer):
    # Copied from transformers.models.dinov2.modeling_dinov2.Dinov2Layer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    turbo_norms, turbo_attention = ("norm1", "norm2"), "attention"
    turbo_attention_out, turbo_mlp_out = ("layer_scale1", "drop_path"), ("layer_scale2", "drop_path")


@merge_with_config_defaults
@capture_outputs(tie_last_hidden_states=False)
def encoder_forward(
    encoder: Dinov2Encoder,
    hidden_states: torch.Tensor,
    runtime: TurboRuntime,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> TurboModelOutputWithPooling:
    """`Dinov2Encoder.forward` with the Turbo layer loop. The encoder records `hidden_states`/`attentions`, as in the
    stock model (whose encoder is a `PreTrainedModel` with its own capture hooks: recording them at the model level
    too would install a second set of hooks on the same layers once the stock model has recorded any)."""
    # Copied from transformers.models.dinov2.modeling_dinov2.Dinov2Encoder.forward (v5.24)
    hidden_states, size, source = run_layers(encoder.layer, hidden_states, runtime, attention_mask, **kwargs)
    return TurboModelOutputWithPooling(last_hidden_state=hidden_states, token_sizes=size, token_source=source)


class TurboDinov2Model(TurboModelMixin, Dinov2Model):
    """`Dinov2Model` whose layers merge tokens with Turbo; the output also carries `token_sizes`/`token_source`.

    Example:

    ```python
    >>> from turbo_hf import TurboConfig, TurboDinov2Model
    >>> from turbo_hf.modeling import TurboDinov2Config
    >>> config = TurboDinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
    ...                            patch_size=7, turbo_config=TurboConfig(r=3))
    >>> TurboDinov2Model(config).turbo_runtime.schedule(17)
    [3, 3]
    ```
    """

    config_class = TurboDinov2Config
    _no_split_modules = ["Dinov2Embeddings", "TurboDinov2Layer"]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> TurboModelOutputWithPooling:
        # Copied from transformers.models.dinov2.modeling_dinov2.Dinov2Model.forward (v5.24)
        embedding_output = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        attention_mask = vision_attention_mask(self.config, embedding_output, attention_mask, self.turbo_runtime)
        encoder_outputs = encoder_forward(self.encoder, embedding_output, self.turbo_runtime, attention_mask, **kwargs)
        sequence_output = self.layernorm(encoder_outputs.last_hidden_state)
        return TurboModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0, :],
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            token_sizes=encoder_outputs.token_sizes,
            token_source=encoder_outputs.token_source,
        )


class TurboDinov2ForImageClassification(TurboModelMixin, Dinov2ForImageClassification):
    """The stock head on [CLS] and the patch mean, taken over the unmerged patches (a size-weighted mean)."""

    config_class = TurboDinov2Config
    _no_split_modules = ["Dinov2Embeddings", "TurboDinov2Layer"]

    @can_return_tuple
    def forward(self, pixel_values=None, labels=None, attention_mask=None, **kwargs) -> ImageClassifierOutput:
        # Copied from transformers.models.dinov2.modeling_dinov2.Dinov2ForImageClassification.forward (v5.24)
        outputs = self.dinov2(pixel_values, attention_mask=attention_mask, **kwargs)
        sequence_output = outputs.last_hidden_state
        patch_mean = unmerge(sequence_output, outputs.token_source)[:, 1:].mean(dim=1)
        logits = self.classifier(torch.cat([sequence_output[:, 0], patch_mean], dim=1))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


AUTO_CLASSES = {"AutoModel": TurboDinov2Model, "AutoModelForImageClassification": TurboDinov2ForImageClassification}
TurboDinov2Model.turbo_auto_classes = TurboDinov2ForImageClassification.turbo_auto_classes = AUTO_CLASSES

register_adapter(
    FamilyAdapter(
        name="dinov2",
        model_classes=(Dinov2Model, Dinov2ForImageClassification),
        vision_models=lambda model: [model if isinstance(model, Dinov2Model) else model.dinov2],
        layers=lambda vision: vision.encoder.layer,
        class_map={
            Dinov2ForImageClassification: TurboDinov2ForImageClassification,
            Dinov2Model: TurboDinov2Model,
            Dinov2Layer: TurboDinov2Layer,
            Dinov2Attention: TurboDinov2Attention,
        },
        attention_attr="attention",
        mlp_attr="mlp",
        hub_classes={TurboDinov2Config: AUTO_CLASSES},
    )
)
