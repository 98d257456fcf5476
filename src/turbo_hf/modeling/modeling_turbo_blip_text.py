"""Turbo for BLIP's ITM text encoder (`BlipForImageTextRetrieval.text_encoder`): text merging and image pruning.

Two reductions, both optional, applied by `apply_blip_text_turbo` and undone by `remove_blip_text_turbo`:

1. Text-token merging. In each `BlipTextLayer`, right after self-attention (before cross-attention and the MLP),
   `reduce_text` merges text tokens: padding never merges, and [CLS]/[ENC] at position 0 (which the ITM head
   reads) is protected and stays at position 0. Later self-attention gets the `log(size)` / padding bias of
   `text_attention_bias`. Merging before cross-attention also makes the cross-attention cheaper.
2. Cross-modal image pruning. Each cross-attention layer ranks the image tokens by the attention they receive
   from the real text tokens (mean over text queries and heads; padding queries excluded), and the next
   cross-attention layer keeps only the top `ceil(image_keep[i] * N)` of the `N` image tokens entering the text
   encoder (kept in their original order; the image [CLS] at index 0 is always kept with `protect_image_cls`).
   Dropped tokens are removed from the keys/values and from the image attention mask (the `log(size)` bias of a
   `TurboBlipForImageTextRetrieval` that already merges vision tokens follows the kept tokens).

Only the text encoder's class is swapped (per instance), its layers are left stock: the ITC path
(`use_itm_head=False`, no image) runs the stock forward unless `merge_itc=True`. With `text_r=0` and every
`image_keep` equal to 1.0 the ITM logits are the stock ones bit for bit. Rows of a batch are independent as long
as each row allows the scheduled `r` (every row removes the same number of text tokens, see `reduce_text`), so
a right-padded batch gives what each text gives alone.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.blip.modeling_blip import BlipForImageTextRetrieval
from transformers.models.blip.modeling_blip_text import BlipTextModel
from transformers.pytorch_utils import apply_chunking_to_forward

from .compat import cache_kwargs, pop_cache
from .configuration_turbo import TurboConfig, as_turbo_config
from .merging import initial_source, unmerge
from .schedules import LayerCost
from .turbo_encoder import LayerStep, TurboRuntime
from .turbo_text import reduce_text, text_attention_bias


@dataclass
class TurboBlipTextItmOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The text encoder's output plus what Turbo reduced.

    Args:
        token_sizes (`torch.Tensor` of shape `(batch_size, sequence_length, 1)`): input text tokens per output token.
        token_source (`torch.Tensor` of shape `(batch_size, input_length)`): output index holding each input token.
        token_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`): True for output tokens that are not padding.
        image_kept (`torch.Tensor` of shape `(batch_size, kept)`): indices (into the image tokens given to the text
            encoder) of the image tokens the last cross-attention layer read; None without an image.
    """

    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    image_kept: torch.Tensor | None = None


@dataclass
class BlipTextTurboSettings:
    """What `apply_blip_text_turbo` set on a text encoder."""

    text_config: TurboConfig
    image_keep: list[float]
    protect_image_cls: bool = True
    merge_itc: bool = False
    runtime: TurboRuntime | None = field(default=None, repr=False)


def _linear_macs(modules) -> int:
    return sum(m.in_features * m.out_features for part in modules for m in part.modules() if isinstance(m, nn.Linear))


def _text_cost(layer: nn.Module) -> LayerCost:
    attention = [layer.attention] + ([layer.crossattention] if hasattr(layer, "crossattention") else [])
    return LayerCost(
        attention_per_token=_linear_macs(attention),
        mlp_per_token=_linear_macs([layer.intermediate, layer.output]),
        hidden_size=layer.attention.self.all_head_size,
    )


def _self_attention(module: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None):
    """`BlipTextSelfAttention.forward` (self-attention, no cache) operation for operation, also returning the
    per-head queries and keys (B, H, N, Dh)."""
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, module.attention_head_size)
    query_layer = module.query(hidden_states).view(hidden_shape).transpose(1, 2)
    key_layer = module.key(hidden_states).view(hidden_shape).transpose(1, 2)
    value_layer = module.value(hidden_states).view(hidden_shape).transpose(1, 2)
    attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
    attention_scores = attention_scores / math.sqrt(module.attention_head_size)
    if attention_mask is not None:
        attention_scores = attention_scores + attention_mask.to(attention_scores.device)
    attention_probs = nn.Softmax(dim=-1)(attention_scores)
    attention_probs_dropped = module.dropout(attention_probs)
    context_layer = torch.matmul(attention_probs_dropped, value_layer)
    context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
    context_layer = context_layer.view(*(context_layer.size()[:-2] + (module.all_head_size,)))
    return context_layer, query_layer, key_layer


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


class TurboBlipTextItmModel(BlipTextModel):
    """`BlipTextModel` (ITM text encoder) with Turbo text merging and cross-modal image pruning.

    Not built directly: `apply_blip_text_turbo` swaps a retrieval model's `text_encoder` to this class.
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
        # when nothing merges, else embeddings, masks (public `create_bidirectional_mask`) and the Turbo layer loop.
        settings: BlipTextTurboSettings = self._blip_text_turbo
        cache = pop_cache(kwargs)
        stock = is_decoder or cache is not None or (encoder_hidden_states is None and not settings.merge_itc)
        if stock:
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
        batch, length = embedding_output.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask[:, 0].all()):
            raise ValueError(
                "Turbo text merging needs right padding (`tokenizer.padding_side = 'right'`): "
                "`attention_mask[:, 0]` must be 1 in every row."
            )
        token_mask = (
            attention_mask.bool()
            if attention_mask is not None and attention_mask.dim() == 2
            else torch.ones(batch, length, dtype=torch.bool, device=embedding_output.device)
        )
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

        steps = settings.runtime.steps(length)
        pooled = torch.zeros(batch, dtype=torch.long, device=embedding_output.device)
        hidden = embedding_output
        size = torch.ones(batch, length, 1, device=hidden.device, dtype=torch.float32)
        source = initial_source(batch, length, hidden.device)
        image, image_mask, image_kept = encoder_hidden_states, encoder_attention_mask, None
        if image is not None:
            num_image = image.shape[1]
            image_kept = torch.arange(num_image, device=image.device).expand(image.shape[0], -1)
        layers = self.encoder.layer
        for idx, (layer, step) in enumerate(zip(layers, steps)):
            next_keep = None
            if image is not None and idx + 1 < len(layers):
                next_keep = max(1, math.ceil(settings.image_keep[idx + 1] * num_image - 1e-9))
                if next_keep >= image.shape[1]:
                    next_keep = None
            hidden, size, source, token_mask, selected = self._layer(
                layer, step, hidden, size, source, token_mask, pooled, text_mask, image, image_mask, next_keep, settings
            )
            if selected is not None:
                image = image.gather(1, selected[:, :, None].expand(-1, -1, image.shape[-1]))
                image_mask = _gather_mask(image_mask, selected)
                image_kept = image_kept.gather(1, selected)
        if settings.text_config.restore_output:
            hidden = unmerge(hidden, source)
            size = torch.ones(batch, length, 1, device=hidden.device, dtype=torch.float32)
            source = initial_source(batch, length, hidden.device)
            token_mask = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else (
                torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
            )
        pooled_output = self.pooler(hidden) if self.pooler is not None else None
        return TurboBlipTextItmOutput(
            last_hidden_state=hidden,
            pooler_output=pooled_output,
            token_sizes=size,
            token_source=source,
            token_mask=token_mask,
            image_kept=image_kept,
        )

    @staticmethod
    def _layer(layer, step: LayerStep, hidden, size, source, token_mask, pooled, text_mask, image, image_mask,
               next_keep, settings):
        """One `BlipTextLayer`: self-attention, text merging, cross-attention (+ image ranking), MLP."""
        bias = text_attention_bias(step, size, token_mask, hidden.dtype)
        context, query, keys = _self_attention(layer.attention.self, hidden, bias if bias is not None else text_mask)
        attention_output = layer.attention.output(context, hidden)
        attention_output, size, source, token_mask = reduce_text(
            step, attention_output, size, source, token_mask, query, keys,
            1.0 / math.sqrt(layer.attention.self.attention_head_size), pooled=pooled,
        )
        selected = None
        if image is not None:
            # the module's own forward: stock BLIP drops the mask, TurboBlipTextCrossAttention applies it
            attention_output, probs = layer.crossattention(
                attention_output, attention_mask=image_mask, encoder_hidden_states=image
            )
            if next_keep is not None:
                scores = image_token_scores(probs, token_mask)
                selected = select_image_tokens(scores, next_keep, settings.protect_image_cls)
        layer_output = apply_chunking_to_forward(
            layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, attention_output
        )
        return layer_output, size, source, token_mask, selected


def _validate_image_keep(image_keep, num_layers: int) -> list[float]:
    if image_keep is None:
        return [1.0] * num_layers
    keep = list(image_keep)
    if len(keep) != num_layers:
        raise ValueError(
            f"`image_keep` needs one ratio per cross-attention layer ({num_layers}), got {len(keep)}."
        )
    for value in keep:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
            raise ValueError(f"`image_keep` ratios must be in (0, 1], got {value!r}.")
    if float(keep[0]) != 1.0:
        raise ValueError(
            f"`image_keep[0]` must be 1.0: the first cross-attention layer has no ranking yet, got {keep[0]!r}."
        )
    if any(later > earlier for earlier, later in itertools.pairwise(keep)):
        raise ValueError(f"`image_keep` must not increase (dropped image tokens cannot come back), got {keep}.")
    return [float(v) for v in keep]


def apply_blip_text_turbo(
    model: nn.Module,
    text_r: int | list[int] = 0,
    image_keep: list[float] | None = None,
    *,
    text_config: TurboConfig | dict | None = None,
    protect_image_cls: bool = True,
    merge_itc: bool = False,
) -> nn.Module:
    """Turbo in the ITM text encoder of a BLIP retrieval model (stock or `TurboBlipForImageTextRetrieval`).

    Args:
        model: a `BlipForImageTextRetrieval` (or subclass).
        text_r: text tokens merged per layer (an int or one per layer); ignored when `text_config` is given.
        image_keep: per cross-attention layer, the share (in (0, 1], non-increasing, first 1.0) of the image tokens
            entering the text encoder that this layer's cross-attention reads. None keeps all.
        text_config: full `TurboConfig` settings for the text merging (mode, schedule, reduction, ...).
        protect_image_cls: always keep image token 0 (the vision [CLS]).
        merge_itc: also merge text tokens in the ITC path (`use_itm_head=False`); off by default (stock ITC).

    Returns:
        The same model, patched in place (weights untouched); applying again replaces the settings.
    """
    if not isinstance(model, BlipForImageTextRetrieval):
        raise TypeError(f"`model` must be a BlipForImageTextRetrieval, got {type(model).__name__}.")
    encoder = model.text_encoder
    if type(encoder) not in (BlipTextModel, TurboBlipTextItmModel):
        raise TypeError(f"`model.text_encoder` must be a BlipTextModel, got {type(encoder).__name__}.")
    layers = encoder.encoder.layer
    if not all(hasattr(layer, "crossattention") for layer in layers):
        raise ValueError("every layer of `model.text_encoder` needs cross-attention (text_config.is_decoder=True).")
    keep = _validate_image_keep(image_keep, len(layers))
    if text_config is None:
        if isinstance(text_r, bool) or not isinstance(text_r, (int, list, tuple)):
            raise ValueError(f"`text_r` must be an int or a list of ints, got {text_r!r}.")
        config = TurboConfig(r=list(text_r) if isinstance(text_r, (list, tuple)) else text_r)
    else:
        config = as_turbo_config(text_config)
    runtime = TurboRuntime(config, num_layers=len(layers), cost=_text_cost(layers[0]), protect_first=True,
                           summary_query="cls")
    try:
        runtime.schedule(min(encoder.config.max_position_embeddings, 512))
    except ValueError as error:
        raise ValueError(f"`text_r`: {error}") from error
    encoder._blip_text_turbo = BlipTextTurboSettings(
        text_config=config, image_keep=keep, protect_image_cls=protect_image_cls, merge_itc=merge_itc, runtime=runtime
    )
    encoder.__class__ = TurboBlipTextItmModel
    return model


def remove_blip_text_turbo(model: nn.Module) -> nn.Module:
    """Undo `apply_blip_text_turbo` (no-op on a model it did not patch)."""
    encoder = getattr(model, "text_encoder", None)
    if type(encoder) is TurboBlipTextItmModel:
        encoder.__class__ = BlipTextModel
        del encoder._blip_text_turbo
    return model


def blip_text_turbo_settings(model: nn.Module) -> BlipTextTurboSettings | None:
    """The settings `apply_blip_text_turbo` put on `model.text_encoder`, or None."""
    return getattr(getattr(model, "text_encoder", None), "_blip_text_turbo", None)


__all__ = [
    "BlipTextTurboSettings",
    "TurboBlipTextItmModel",
    "TurboBlipTextItmOutput",
    "apply_blip_text_turbo",
    "blip_text_turbo_settings",
    "image_token_scores",
    "remove_blip_text_turbo",
    "select_image_tokens",
]
