"""Turbo for the CLIP vision tower (`CLIPModel`, `CLIPVisionModel`, `CLIPVisionModelWithProjection`,
`CLIPForImageClassification`). The text tower shares the layer classes and is never touched: classes are
swapped per instance, inside the vision model only."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.clip.configuration_clip import CLIPConfig, CLIPVisionConfig
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
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


class TurboCLIPConfig(CLIPConfig):
    """`CLIPConfig` with a `turbo_config` (`TurboConfig`, for the vision tower) inside `config.json`."""

    model_type = "turbo_clip"
    sub_configs_defaults = {**CLIPConfig.sub_configs_defaults, "turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboCLIPVisionConfig(CLIPVisionConfig):
    """`CLIPVisionConfig` with a `turbo_config` (`TurboConfig`) inside `config.json`."""

    model_type = "turbo_clip_vision_model"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboCLIPAttention(TurboAttentionMixin, CLIPAttention):
    turbo_out_proj, turbo_scaling, turbo_dropout = "out_proj", "scale", "dropout"
    turbo_eager = staticmethod(eager_attention_forward)


class TurboCLIPEncoderLayer(TurboPreNormLayerMixin, CLIPEncoderLayer):
    # Copied from transformers.models.clip.modeling_clip.CLIPEncoderLayer.forward (v5.24): `TurboPreNormLayerMixin.forward`
    """The CLIP encoder layer with a Turbo step (the kit's pre-norm layer, CLIP's attribute names)."""


class TurboCLIPVisionModel(TurboModelMixin, CLIPVisionModel):
    """`CLIPVisionModel` whose layers merge tokens with Turbo; the output also carries token sizes and sources."""

    config_class = TurboCLIPVisionConfig
    _no_split_modules = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer"]

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool | None = False, **kwargs
    ) -> TurboModelOutputWithPooling:
        # Copied from transformers.models.clip.modeling_clip.CLIPVisionModel.forward (v5.24)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(hidden_states)
        hidden_states, size, source = run_layers(self.encoder.layers, hidden_states, self.turbo_runtime, **kwargs)
        pooled_output = self.post_layernorm(hidden_states[:, 0, :])
        return turbo_output(hidden_states, pooled_output, size, source)


class TurboCLIPModel(TurboModelMixin, CLIPModel):
    """`CLIPModel` with Turbo in its vision tower; the text tower is the stock one.

    Example:

    ```python
    >>> from turbo_hf import TurboCLIPModel, TurboConfig
    >>> from turbo_hf.modeling import TurboCLIPConfig
    >>> tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    >>> config = TurboCLIPConfig(text_config=dict(vocab_size=99, **tower),
    ...                          vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16,
    ...                          turbo_config=TurboConfig(r=2))
    >>> TurboCLIPModel(config).vision_model.turbo_runtime.schedule(17)
    [2, 2]
    ```
    """

    config_class = TurboCLIPConfig
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings", "TurboCLIPEncoderLayer"]


class TurboCLIPVisionModelWithProjection(TurboModelMixin, CLIPVisionModelWithProjection):
    """`CLIPVisionModelWithProjection` with Turbo in its vision tower."""

    config_class = TurboCLIPVisionConfig
    _no_split_modules = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer"]


class TurboCLIPForImageClassification(TurboModelMixin, CLIPForImageClassification):
    """The stock head on the patch mean, taken over the unmerged patches (a size-weighted mean)."""

    config_class = TurboCLIPConfig
    _no_split_modules = ["CLIPVisionEmbeddings", "TurboCLIPEncoderLayer"]

    @can_return_tuple
    def forward(self, pixel_values=None, labels=None, **kwargs) -> ImageClassifierOutput:
        # Copied from transformers.models.clip.modeling_clip.CLIPForImageClassification.forward (v5.24)
        outputs = self.vision_model(pixel_values, **kwargs)
        patches = unmerge(outputs.last_hidden_state, outputs.token_source)[:, 1:, :]
        logits = self.classifier(torch.mean(patches, dim=1))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


CLIP_AUTO_CLASSES = {
    "AutoModel": TurboCLIPModel,
    "AutoModelForZeroShotImageClassification": TurboCLIPModel,
    "AutoModelForImageClassification": TurboCLIPForImageClassification,
}
VISION_AUTO_CLASSES = {"AutoModel": TurboCLIPVisionModel}
TurboCLIPModel.turbo_auto_classes = TurboCLIPForImageClassification.turbo_auto_classes = CLIP_AUTO_CLASSES
TurboCLIPVisionModel.turbo_auto_classes = VISION_AUTO_CLASSES
TurboCLIPVisionModelWithProjection.turbo_auto_classes = {"AutoModel": TurboCLIPVisionModelWithProjection}

register_adapter(
    FamilyAdapter(
        name="clip",
        model_classes=(CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection, CLIPForImageClassification),
        vision_models=lambda model: [model if isinstance(model, CLIPVisionModel) else model.vision_model],
        layers=lambda vision: vision.encoder.layers,
        class_map={
            CLIPModel: TurboCLIPModel,
            CLIPVisionModelWithProjection: TurboCLIPVisionModelWithProjection,
            CLIPForImageClassification: TurboCLIPForImageClassification,
            CLIPVisionModel: TurboCLIPVisionModel,
            CLIPEncoderLayer: TurboCLIPEncoderLayer,
            CLIPAttention: TurboCLIPAttention,
        },
        attention_attr="self_attn",
        mlp_attr="mlp",
        hub_classes={TurboCLIPConfig: CLIP_AUTO_CLASSES, TurboCLIPVisionConfig: VISION_AUTO_CLASSES},
    )
)
