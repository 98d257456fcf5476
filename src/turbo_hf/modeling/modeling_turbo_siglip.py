"""Turbo for the SigLIP vision tower (`SiglipModel`, `SiglipVisionModel`, `SiglipForImageClassification`).

SigLIP has no [CLS] token, so no token is protected and the semantic value comes from a stand-in summary
query: the size-weighted mean of the layer's queries (one attention row, O(N d)). The attention-pooling
(MAP) head gets the `log(size)` bias on its keys, and mean pooling is taken over the unmerged tokens, so
pooled features weigh every original patch once.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.siglip.configuration_siglip import SiglipConfig, SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import (
    SiglipAttention,
    SiglipEncoderLayer,
    SiglipForImageClassification,
    SiglipModel,
    SiglipMultiheadAttentionPoolingHead,
    SiglipVisionModel,
    eager_attention_forward,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_turbo import TurboConfig
from .merging import unmerge
from .output_order import stock_field_order
from .registry import FamilyAdapter, register_adapter
from .turbo_attention import TurboAttentionMixin
from .turbo_encoder import TurboModelOutputWithPooling, run_layers
from .turbo_layers import TurboModelMixin, TurboPreNormLayerMixin, turbo_output


class TurboSiglipConfig(SiglipConfig):
    """`SiglipConfig` with a `turbo_config` (`TurboConfig`, for the vision tower) inside `config.json`."""

    model_type = "turbo_siglip"
    sub_configs_defaults = {**SiglipConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboSiglipVisionConfig(SiglipVisionConfig):
    """`SiglipVisionConfig` with a `turbo_config` (`TurboConfig`) inside `config.json`."""

    model_type = "turbo_siglip_vision_model"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboSiglipAttention(TurboAttentionMixin, SiglipAttention):
    turbo_out_proj, turbo_scaling, turbo_dropout = "out_proj", "scale", "dropout"
    turbo_eager = staticmethod(eager_attention_forward)


class TurboSiglipEncoderLayer(TurboPreNormLayerMixin, SiglipEncoderLayer):
    # Copied from transformers.models.siglip.modeling_siglip.SiglipEncoderLayer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    """The SigLIP encoder layer with a Turbo step (the kit's pre-norm layer, SigLIP's attribute names)."""


class TurboSiglipMultiheadAttentionPoolingHead(SiglipMultiheadAttentionPoolingHead):
    """The MAP head with `log(size)` added to the logits of its keys (proportional attention)."""

    def forward(self, hidden_state: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # Copied from transformers.models.siglip.modeling_siglip.SiglipMultiheadAttentionPoolingHead.forward (v5.24)
        batch_size = hidden_state.shape[0]
        probe = self.probe.repeat(batch_size, 1, 1)
        mask = None if bias is None else bias[:, 0].repeat_interleave(self.attention.num_heads, dim=0)
        hidden_state = self.attention(probe, hidden_state, hidden_state, attn_mask=mask)[0]
        residual = hidden_state
        hidden_state = self.layernorm(hidden_state)
        hidden_state = residual + self.mlp(hidden_state)
        return hidden_state[:, 0]


class TurboSiglipVisionModel(TurboModelMixin, SiglipVisionModel):
    """`SiglipVisionModel` whose layers merge tokens with Turbo; the output also carries token sizes and sources."""

    config_class = TurboSiglipVisionConfig
    _no_split_modules = ["SiglipVisionEmbeddings", "TurboSiglipEncoderLayer", "TurboSiglipMultiheadAttentionPoolingHead"]

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values, interpolate_pos_encoding: bool | None = False, **kwargs
    ) -> TurboModelOutputWithPooling:
        # Copied from transformers.models.siglip.modeling_siglip.SiglipVisionModel.forward (v5.24)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states, size, source = run_layers(self.encoder.layers, hidden_states, self.turbo_runtime, **kwargs)
        last_hidden_state = self.post_layernorm(hidden_states)
        bias = self.turbo_runtime.output_bias(size, source, last_hidden_state.dtype)
        pooler_output = self.head(last_hidden_state, bias) if self.use_head else None
        return turbo_output(last_hidden_state, pooler_output, size, source)


class TurboSiglipModel(TurboModelMixin, SiglipModel):
    """`SiglipModel` with Turbo in its vision tower; the text tower is the stock one."""

    config_class = TurboSiglipConfig
    _no_split_modules = ["SiglipTextEmbeddings", "SiglipEncoderLayer", "SiglipVisionEmbeddings", "TurboSiglipEncoderLayer", "TurboSiglipMultiheadAttentionPoolingHead"]


class TurboSiglipForImageClassification(TurboModelMixin, SiglipForImageClassification):
    """The stock head on the token mean, taken over the unmerged tokens (a size-weighted mean)."""

    config_class = TurboSiglipConfig
    _no_split_modules = ["SiglipVisionEmbeddings", "TurboSiglipEncoderLayer", "TurboSiglipMultiheadAttentionPoolingHead"]

    @can_return_tuple
    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False, **kwargs):
        # Copied from transformers.models.siglip.modeling_siglip.SiglipForImageClassification.forward (v5.24)
        outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        tokens = unmerge(outputs.last_hidden_state, outputs.token_source)
        logits = self.classifier(torch.mean(tokens, dim=1))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


SIGLIP_AUTO_CLASSES = {
    "AutoModel": TurboSiglipModel,
    "AutoModelForZeroShotImageClassification": TurboSiglipModel,
    "AutoModelForImageClassification": TurboSiglipForImageClassification,
}
VISION_AUTO_CLASSES = {"AutoModel": TurboSiglipVisionModel}
TurboSiglipModel.turbo_auto_classes = TurboSiglipForImageClassification.turbo_auto_classes = SIGLIP_AUTO_CLASSES
TurboSiglipVisionModel.turbo_auto_classes = VISION_AUTO_CLASSES

register_adapter(
    FamilyAdapter(
        name="siglip",
        model_classes=(SiglipModel, SiglipVisionModel, SiglipForImageClassification),
        vision_models=lambda model: [model if isinstance(model, SiglipVisionModel) else model.vision_model],
        layers=lambda vision: vision.encoder.layers,
        class_map={
            SiglipModel: TurboSiglipModel,
            SiglipForImageClassification: TurboSiglipForImageClassification,
            SiglipVisionModel: TurboSiglipVisionModel,
            SiglipMultiheadAttentionPoolingHead: TurboSiglipMultiheadAttentionPoolingHead,
            SiglipEncoderLayer: TurboSiglipEncoderLayer,
            SiglipAttention: TurboSiglipAttention,
        },
        attention_attr="self_attn",
        mlp_attr="mlp",
        protect_first=False,
        summary_query="mean",
        hub_classes={TurboSiglipConfig: SIGLIP_AUTO_CLASSES, TurboSiglipVisionConfig: VISION_AUTO_CLASSES},
    )
)
