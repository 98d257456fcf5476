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
from .output_order import stock_field_order
from .registry import FamilyAdapter, register_adapter
from .turbo_attention import TurboAttentionMixin
from .turbo_encoder import TurboModelOutputWithPooling, run_layers
from .turbo_layers import TurboModelMixin, TurboPreNormLayerMixin, turbo_output, vision_attention_mask


class TurboViTConfig(ViTConfig):
    """`ViTConfig` with a `turbo_config` (`TurboConfig`) that travels inside `config.json`."""

    model_type = "turbo_vit"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboViTAttention(TurboAttentionMixin, ViTAttention):
    turbo_eager = staticmethod(eager_attention_forward)


class TurboViTLayer(TurboPreNormLayerMixin, ViTLayer):
    # Copied from transformers.models.vit.modeling_vit.ViTLayer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    turbo_norms, turbo_attention = ("layernorm_before", "layernorm_after"), "attention"
    turbo_attention_out = turbo_mlp_out = ("dropout",)


class TurboViTModel(TurboModelMixin, ViTModel):
    """`ViTModel` whose layers merge tokens with Turbo; the output also carries `token_sizes`/`token_source`.

    Example:

    ```python
    >>> from turbo_hf import TurboConfig, TurboViTModel
    >>> from turbo_hf.modeling import TurboViTConfig
    >>> config = TurboViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                         image_size=32, patch_size=8, turbo_config=TurboConfig(r=2))
    >>> TurboViTModel(config).turbo_runtime.schedule(17)
    [2, 2]
    ```
    """

    config_class = TurboViTConfig
    _no_split_modules = ["ViTEmbeddings", "TurboViTLayer"]

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
        return turbo_output(sequence_output, pooled_output, size, source)


class TurboViTForImageClassification(TurboModelMixin, ViTForImageClassification):
    """`ViTForImageClassification` with Turbo in its encoder (the head reads [CLS], which never merges)."""

    config_class = TurboViTConfig
    _no_split_modules = ["ViTEmbeddings", "TurboViTLayer"]


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
