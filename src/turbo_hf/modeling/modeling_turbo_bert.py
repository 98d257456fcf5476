"""Turbo for BERT-style text encoders (`BertModel`, e.g. sentence-transformers' MiniLM).

[CLS] (position 0) is protected and gives the semantic value; padding never merges. The output carries
`token_sizes`, `token_source` and `token_mask`; with `reduction="merge"`,
`turbo_hf.unmerge(last_hidden_state, token_source)` with the input attention mask gives the exact size-weighted
version of mean pooling (with `"prune"`, a pruned token is restored as a copy of its partner).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert.configuration_bert import BertConfig
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertLayer,
    BertModel,
    BertSelfAttention,
    eager_attention_forward,
)
from transformers.pytorch_utils import apply_chunking_to_forward
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_turbo import TurboConfig
from .hub_export import TurboHubMixin
from .output_order import stock_field_order
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter
from .turbo_encoder import LayerStep
from .turbo_text import reduce_text, run_text_layers, text_attention_bias, text_self_attention, text_token_mask


@dataclass
class TurboTextModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """`BaseModelOutputWithPoolingAndCrossAttentions` plus what Turbo merged.

    Args:
        token_sizes (`torch.Tensor` of shape `(batch_size, sequence_length, 1)`): input tokens per output token.
        token_source (`torch.Tensor` of shape `(batch_size, input_length)`): output index holding each input token.
        token_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`): True for output tokens that are not padding.
    """

    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None


class TurboBertConfig(BertConfig):
    """`BertConfig` with a `turbo_config` (`TurboConfig`) that travels inside `config.json`."""

    model_type = "turbo_bert"
    sub_configs_defaults = {"turbo_config": TurboConfig}
    turbo_config: dict | TurboConfig | None = None


class TurboBertSelfAttention(BertSelfAttention):
    def forward(self, hidden_states, attention_mask=None, **kwargs):
        # Copied from transformers.models.bert.modeling_bert.BertSelfAttention.forward (v5.24)
        return text_self_attention(
            self, hidden_states, attention_mask, scaling=self.scaling, eager_fn=eager_attention_forward, **kwargs
        )


class TurboBertAttention(BertAttention):
    def forward(self, hidden_states, attention_mask=None, **kwargs):
        # Copied from transformers.models.bert.modeling_bert.BertAttention.forward (v5.24)
        output, weights, query, keys = self.self(hidden_states, attention_mask=attention_mask, **kwargs)
        return self.output(output, hidden_states), weights, query, keys


class TurboBertLayer(BertLayer):
    def forward(self, hidden_states, size, source, token_mask, pooled, step: LayerStep, attention_mask=None, **kwargs):
        # Copied from transformers.models.bert.modeling_bert.BertLayer.forward (v5.24)
        bias = text_attention_bias(step, size, token_mask, hidden_states.dtype)
        attention_output, _, query, keys = self.attention(
            hidden_states, bias if bias is not None else attention_mask, **kwargs
        )
        attention_output, size, source, token_mask = reduce_text(
            step, attention_output, size, source, token_mask, query, keys, self.attention.self.scaling, pooled=pooled
        )
        layer_output = apply_chunking_to_forward(
            self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attention_output
        )
        return layer_output, size, source, token_mask


class TurboBertModel(TurboHubMixin, BertModel):
    """`BertModel` (encoder use) whose layers merge text tokens with Turbo.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf import TurboBertModel, TurboConfig
    >>> from turbo_hf.modeling import TurboBertConfig
    >>> config = TurboBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                          intermediate_size=64, turbo_config=TurboConfig(r=3))
    >>> out = TurboBertModel(config).eval()(input_ids=torch.randint(1, 99, (2, 16)))
    >>> out.last_hidden_state.shape[1], int(out.token_sizes.sum(1).min())
    (10, 16)
    ```
    """

    config_class = TurboBertConfig
    _no_split_modules = ["BertEmbeddings", "TurboBertLayer"]

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        apply_turbo_from_config(self)

    @stock_field_order
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> TurboTextModelOutput:
        # Copied from transformers.models.bert.modeling_bert.BertModel.forward (v5.24)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        embedding_output = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        token_mask = text_token_mask(attention_mask, embedding_output)
        mask_4d = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        pooled = torch.zeros(embedding_output.shape[0], dtype=torch.long, device=embedding_output.device)
        hidden_states, size, source, token_mask = run_text_layers(
            self.encoder.layer, embedding_output, self.turbo_runtime, token_mask, pooled, mask_4d,
            position_ids=position_ids, **kwargs,
        )
        pooled_output = self.pooler(hidden_states) if self.pooler is not None else None
        return TurboTextModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=pooled_output,
            token_sizes=size,
            token_source=source,
            token_mask=token_mask,
        )


def _check_encoder(model) -> list:
    if model.config.is_decoder or model.config.add_cross_attention:
        raise ValueError("Turbo merges tokens of BERT encoders only; this BertModel is a decoder (is_decoder=True).")
    return [model]


AUTO_CLASSES = {"AutoModel": TurboBertModel}
TurboBertModel.turbo_auto_classes = AUTO_CLASSES

register_adapter(
    FamilyAdapter(
        name="bert",
        spatial_only=True,
        model_classes=(BertModel,),
        vision_models=_check_encoder,
        layers=lambda encoder: encoder.encoder.layer,
        class_map={
            BertModel: TurboBertModel,
            BertLayer: TurboBertLayer,
            BertAttention: TurboBertAttention,
            BertSelfAttention: TurboBertSelfAttention,
        },
        attention_attr="attention",
        mlp_attr=("intermediate", "output"),
        tokens_for_config=lambda config: min(config.max_position_embeddings, 512),
        hub_classes={TurboBertConfig: AUTO_CLASSES},
    )
)
