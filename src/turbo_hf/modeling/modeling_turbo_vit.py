"""Turbo for ViT (`ViTModel`, `ViTForImageClassification`)."""

from __future__ import annotations

import torch
from transformers.models.vit.configuration_vit import ViTConfig
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTForImageClassification,
    ViTLayer,
    ViTModel,
    eager_attention_forward,
)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_turbo import TurboConfig
from .hub_export import TurboHubMixin
from .patching import apply_turbo_from_config
from .output_order import stock_field_order
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import (
    LayerStep,
    ProjectedAttentionMixin,
    TurboModelOutputWithPooling,
    run_layers,
    vision_attention_mask,
)


class TurboViTConfig(ViTConfig):
    """`ViTConfig` with a `turbo_config` (`TurboConfig`) that travels inside `config.json`."""

    model_type = "turbo_vit"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboViTAttention(ProjectedAttentionMixin, ViTAttention):
    turbo_eager = staticmethod(eager_attention_forward)


class TurboViTLayer(ViTLayer):
    def forward(self, hidden_states, size, source, step: LayerStep, attention_mask=None, **kwargs):
        # Copied from transformers.models.vit.modeling_vit.ViTLayer.forward (v5.24)
        bias = step.attention_bias(size, hidden_states.dtype)
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states, _, query, keys = self.attention(
            hidden_states, bias if bias is not None else attention_mask, **kwargs
        )
        hidden_states = self.dropout(hidden_states) + residual
        hidden_states, size, source = step.reduce(
            hidden_states, size, source, query, keys, self.attention.scaling, bias
        )

        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.dropout(hidden_states) + residual
        return hidden_states, size, source


class TurboViTModel(TurboHubMixin, ViTModel):
    """`ViTModel` whose layers merge tokens with Turbo; the output also carries `token_sizes`/`token_source`.

    Example:

    ```python
    >>> from turbo_hf import TurboConfig, TurboViTConfig, TurboViTModel
    >>> config = TurboViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                         image_size=32, patch_size=8, turbo_config=TurboConfig(r=2))
    >>> TurboViTModel(config).turbo_runtime.schedule(17)
    [2, 2]
    ```
    """

    config_class = TurboViTConfig
    _no_split_modules = ["ViTEmbeddings", "TurboViTLayer"]

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        apply_turbo_from_config(self)

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> TurboModelOutputWithPooling:
        # Copied from transformers.models.vit.modeling_vit.ViTModel.forward (v5.24)
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)
        hidden_states = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        attention_mask = vision_attention_mask(self.config, hidden_states, attention_mask, self.turbo_runtime)
        hidden_states, size, source = run_layers(
            self.layers, hidden_states, self.turbo_runtime, attention_mask, **kwargs
        )
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return TurboModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled_output, token_sizes=size, token_source=source
        )


class TurboViTForImageClassification(TurboHubMixin, ViTForImageClassification):
    """`ViTForImageClassification` with Turbo in its encoder (the head reads [CLS], which never merges)."""

    config_class = TurboViTConfig
    _no_split_modules = ["ViTEmbeddings", "TurboViTLayer"]

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        apply_turbo_from_config(self)


AUTO_CLASSES = {"AutoModel": TurboViTModel, "AutoModelForImageClassification": TurboViTForImageClassification}
TurboViTModel.turbo_auto_classes = TurboViTForImageClassification.turbo_auto_classes = AUTO_CLASSES

register_adapter(
    FamilyAdapter(
        name="vit",
        model_classes=(ViTModel, ViTForImageClassification),
        vision_models=lambda model: [model if isinstance(model, ViTModel) else model.vit],
        layers=lambda vision: vision.layers,
        class_map={
            ViTForImageClassification: TurboViTForImageClassification,
            ViTModel: TurboViTModel,
            ViTLayer: TurboViTLayer,
            ViTAttention: TurboViTAttention,
        },
        attention_attr="attention",
        mlp_attr="mlp",
        hub_classes={TurboViTConfig: AUTO_CLASSES},
    )
)
