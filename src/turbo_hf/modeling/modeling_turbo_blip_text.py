"""Turbo for BLIP's ITM text encoder (`BlipForImageTextRetrieval.text_encoder`): text merging and image pruning.

Two reductions, set by `TurboConfig(text_r=..., image_keep=...)` and applied by `apply_turbo` together with the
vision encoder's merging (one patch, one `remove_turbo`), through `BLIP_ITM_TEXT_ENCODER`, the extra encoder
of the BLIP family adapter:

1. Text-token merging (`text_r`). In each `BlipTextLayer`, right after self-attention (before cross-attention
   and the MLP), `reduce_text` merges text tokens: padding never merges, and [CLS]/[ENC] at position 0 (which
   the ITM head reads) is protected and stays at position 0. Later self-attention gets the `log(size)` /
   padding bias of `text_attention_bias`. Merging before cross-attention also makes the cross-attention cheaper.
2. Cross-modal image pruning (`image_keep`). Each cross-attention layer ranks the image tokens by the attention
   they receive from the real text tokens (mean over text queries and heads; padding queries excluded), and the
   next cross-attention layer keeps only the top `ceil(image_keep[i] * N)` of the `N` image tokens entering the
   text encoder (kept in their original order; the image [CLS] at index 0 is always kept). Dropped tokens are
   removed from the keys/values and from the image attention mask (the `log(size)` bias of merged vision tokens
   follows the kept tokens).

Only the text encoder's class is swapped, its layers are left stock: without image tokens (the ITC path,
`use_itm_head=False`) it runs the stock forward. With `text_r=0` and every `image_keep` equal to 1.0 the ITM
logits are the stock ones bit for bit. Rows of a batch are independent as long as each row allows the scheduled
`r` (every row removes the same number of text tokens, see `reduce_text`), so a right-padded batch gives what
each text gives alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.blip.modeling_blip import BlipForImageTextRetrieval
from transformers.models.blip.modeling_blip_text import BlipTextModel
from transformers.pytorch_utils import apply_chunking_to_forward

from .compat import cache_kwargs, pop_cache
from .configuration_turbo import TurboConfig
from .registry import ReducibleEncoder
from .turbo_encoder import LayerStep
from .turbo_text import reduce_text, run_text_layers, text_attention_bias, text_self_attention, text_token_mask


@dataclass
class TurboBlipTextItmOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The text encoder's output plus what Turbo reduced.

    Args:
        token_sizes (`torch.Tensor` of shape `(batch_size, sequence_length, 1)`): input text tokens per output token.
        token_source (`torch.Tensor` of shape `(batch_size, input_length)`): output index holding each input token.
        token_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`): True for output tokens that are not padding.
        image_kept (`torch.Tensor` of shape `(batch_size, kept)`): indices (into the image tokens given to the text
            encoder) of the image tokens the last cross-attention layer read.
    """

    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    image_kept: torch.Tensor | None = None


def blip_text_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager attention of `BlipTextSelfAttention` in the attention-interface signature (output (B, N, H, Dh),
    probabilities): the stock operations, scores divided by `sqrt(attention_head_size)` (`scaling` is what
    the other implementations get), so eager attention is the stock model bit for bit."""
    # Copied from transformers.models.blip.modeling_blip_text.BlipTextSelfAttention.forward (v5.24)
    attention_scores = torch.matmul(query, key.transpose(-1, -2))
    attention_scores = attention_scores / math.sqrt(module.attention_head_size)
    if attention_mask is not None:
        attention_scores = attention_scores + attention_mask.to(attention_scores.device)
    attention_probs = nn.Softmax(dim=-1)(attention_scores)
    attention_probs_dropped = nn.functional.dropout(attention_probs, p=dropout, training=module.training)
    context_layer = torch.matmul(attention_probs_dropped, value)
    return context_layer.transpose(1, 2).contiguous(), attention_probs


def image_token_scores(attention_probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Cross-attention each image token receives, (B, N): the mean over heads and over real text queries of the
    cross-attention probabilities (B, H, T, N); padding queries (`token_mask` False) are excluded."""
    received = attention_probs.mean(dim=1)  # (B, T, N)
    weights = token_mask.to(received.dtype)[:, :, None]
    return (received * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


def _gather_mask(mask: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    if mask is None or mask.shape[-1] == 1:
        return mask
    index = index.view(index.shape[0], *([1] * (mask.dim() - 2)), index.shape[1])
    if mask.shape[0] == 1 and index.shape[0] > 1:
        mask = mask.expand(index.shape[0], *mask.shape[1:])
    return mask.gather(-1, index.expand(*mask.shape[:-1], index.shape[-1]))


def select_image_tokens(scores: torch.Tensor, keep: int, protect_cls: bool) -> torch.Tensor:
    """Indices (B, keep), ascending, of the `keep` highest-scoring image tokens (index 0 first if protected)."""
    if protect_cls:
        scores = scores.clone()
        scores[:, 0] = math.inf
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return order[:, :keep].sort(dim=-1).values


class ImageTokens:
    """The image tokens the cross-attention layers read, pruned from layer to layer by `image_keep`.

    Args:
        hidden: the image tokens (B, N, C) given to the text encoder.
        mask: their cross-attention mask (or `log(size)` bias), None for none.
        image_keep: per cross-attention layer, the share of the N tokens it reads (None: all of them).
    """

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor | None, image_keep: list[float] | None) -> None:
        self.hidden, self.mask, self.image_keep = hidden, mask, image_keep
        self.count = hidden.shape[1]
        self.kept = torch.arange(self.count, device=hidden.device).expand(hidden.shape[0], -1)

    def next_keep(self, idx: int) -> int | None:
        """How many image tokens layer `idx + 1` reads, or None when it reads all that layer `idx` read."""
        if self.image_keep is None or idx + 1 >= len(self.image_keep):
            return None
        keep = max(1, math.ceil(self.image_keep[idx + 1] * self.count - 1e-9))
        return None if keep >= self.hidden.shape[1] else keep

    def select(self, index: torch.Tensor) -> None:
        """Keep the image tokens at `index` (B, kept), ascending."""
        self.hidden = self.hidden.gather(1, index[:, :, None].expand(-1, -1, self.hidden.shape[-1]))
        self.mask = _gather_mask(self.mask, index)
        self.kept = self.kept.gather(1, index)


def itm_text_layer(
    layer: nn.Module, idx: int, image: ImageTokens, hidden, size, source, token_mask, pooled, step: LayerStep, mask
):
    """One `BlipTextLayer`: self-attention, text merging, cross-attention (+ image ranking), MLP; called by
    `run_text_layers` with `layer`, `idx` and `image` bound."""
    attention = layer.attention.self
    scaling = 1.0 / math.sqrt(attention.attention_head_size)
    bias = text_attention_bias(step, size, token_mask, hidden.dtype)
    context, _, query, keys = text_self_attention(
        attention, hidden, bias if bias is not None else mask, scaling=scaling, eager_fn=blip_text_eager_attention
    )
    attention_output = layer.attention.output(context, hidden)
    attention_output, size, source, token_mask = reduce_text(
        step, attention_output, size, source, token_mask, query, keys, scaling, pooled=pooled
    )
    # the module's own forward: stock BLIP drops the mask, TurboBlipTextCrossAttention applies it
    attention_output, probs = layer.crossattention(
        attention_output, attention_mask=image.mask, encoder_hidden_states=image.hidden
    )
    keep = image.next_keep(idx)
    if keep is not None:
        image.select(select_image_tokens(image_token_scores(probs, token_mask), keep, protect_cls=True))
    layer_output = apply_chunking_to_forward(
        layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, attention_output
    )
    return layer_output, size, source, token_mask


class TurboBlipTextItmModel(BlipTextModel):
    """`BlipTextModel` (ITM text encoder) with Turbo text merging and cross-modal image pruning.

    Not built directly: `apply_turbo` with `text_r` or `image_keep` swaps a retrieval model's `text_encoder` to
    this class (see `BLIP_ITM_TEXT_ENCODER`).
    """

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        is_decoder: bool | None = False,
        **kwargs,
    ):
        # Overrides transformers.models.blip.modeling_blip_text.BlipTextModel.forward (v5.24): the stock forward
        # without image tokens, else embeddings, masks (public `create_bidirectional_mask`) and the Turbo layers.
        cache = pop_cache(kwargs)
        if is_decoder or cache is not None or encoder_hidden_states is None:
            return BlipTextModel.forward(
                self,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                encoder_embeds=encoder_embeds,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                use_cache=use_cache,
                **cache_kwargs(cache),
                is_decoder=is_decoder,
                **kwargs,
            )
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if encoder_embeds is None:
            embedding_output = self.embeddings(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        else:
            embedding_output = encoder_embeds
        token_mask = text_token_mask(attention_mask, embedding_output)
        text_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        if encoder_attention_mask is not None:
            encoder_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=embedding_output,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
        runtime = self.turbo_runtime
        image = ImageTokens(encoder_hidden_states, encoder_attention_mask, runtime.config.image_keep)
        layers = [partial(itm_text_layer, layer, idx, image) for idx, layer in enumerate(self.encoder.layer)]
        pooled = torch.zeros(embedding_output.shape[0], dtype=torch.long, device=embedding_output.device)
        hidden, size, source, token_mask = run_text_layers(layers, embedding_output, runtime, token_mask, pooled, text_mask)
        return TurboBlipTextItmOutput(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            token_sizes=size,
            token_source=source,
            token_mask=token_mask,
            image_kept=image.kept,
        )


def _itm_text_encoders(model: nn.Module) -> list[nn.Module]:
    return [model.text_encoder] if isinstance(model, BlipForImageTextRetrieval) else []


def _check_itm_encoder(encoder: nn.Module, config: TurboConfig) -> None:
    """Refuse `text_r` / `image_keep` that do not fit this text encoder (one entry per layer)."""
    layers = encoder.encoder.layer
    if not all(hasattr(layer, "crossattention") for layer in layers):
        raise ValueError("`text_r`/`image_keep` need cross-attention in every layer of `model.text_encoder`.")
    for name in ("text_r", "image_keep"):
        value = getattr(config, name)
        if isinstance(value, list) and len(value) != len(layers):
            raise ValueError(
                f"`{name}` has {len(value)} entries but the ITM text encoder has {len(layers)} layers: give one per layer."
            )


def _text_settings(config: TurboConfig) -> TurboConfig:
    """What the text encoder runs with: `r` from `text_r`; `flops_ratio` and `min_tokens` count vision tokens,
    and text tokens always keep their order (positions and padding; `token_order` is about the vision tokens)."""
    return config.replace(r=config.text_r, flops_ratio=None, min_tokens=0, token_order="spatial")


BLIP_ITM_TEXT_ENCODER = ReducibleEncoder(
    name="text",
    settings=("text_r", "image_keep"),
    description="the ITM text encoder of BlipForImageTextRetrieval",
    encoders=_itm_text_encoders,
    layers=lambda encoder: encoder.encoder.layer,
    class_map={BlipTextModel: TurboBlipTextItmModel},
    attention_attr=("attention", "crossattention"),
    mlp_attr=("intermediate", "output"),
    runtime_config=_text_settings,
    tokens_for_config=lambda config: min(config.max_position_embeddings, 512),
    validate=_check_itm_encoder,
)


__all__ = [
    "BLIP_ITM_TEXT_ENCODER",
    "ImageTokens",
    "TurboBlipTextItmModel",
    "TurboBlipTextItmOutput",
    "blip_text_eager_attention",
    "image_token_scores",
    "select_image_tokens",
]
