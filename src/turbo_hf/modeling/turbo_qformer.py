"""What BLIP-2 and InstructBLIP share downstream of the Turbo vision encoder: the image tokens and the
`encoder_attention_mask` their Q-Former cross-attends to.

Once tokens have merged the Q-Former gets the `log(size)` bias as a 4D float `encoder_attention_mask`
(B, 1, 1, N'), so a merged token weighs as much as the patches it holds; when nothing merged it gets the stock
all-ones mask, bit for bit the stock model.
"""

from __future__ import annotations

import torch
from torch import nn

from .merging import unmerge


def qformer_dtype(qformer: nn.Module) -> torch.dtype:
    """The dtype the Q-Former computes in (BLIP-2 keeps it in float32)."""
    return next(qformer.parameters()).dtype


def qformer_image_inputs(
    vision_model: nn.Module, vision_outputs, qformer: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image tokens and the `encoder_attention_mask` the Q-Former cross-attends to.

    - No token merged (r=0, pruning, `restore_output=True` or `proportional_attention=False`): the encoder
      output and the stock all-ones (B, N) mask, so the Q-Former computes exactly what it does in the stock
      model.
    - Tokens merged: the merged tokens and the `log(size)` bias as a 4D float mask (B, 1, 1, N') in the
      Q-Former's dtype; the Q-Former's mask builder passes a 4D mask through unchanged to its cross-attention,
      and eager and SDPA add it to the logits.
    - Tokens merged and a Q-Former on `flex_attention`, which reads a tensor mask through a `score_mask`
      path that crashes on CPU: the merged tokens unmerged (each copied to every patch it holds) with the
      stock mask. Softmax over `size` copies of a key equals adding `log(size)` to its logit, so this is the
      same proportional attention, at the cost of cross-attention keys for all N tokens.
    """
    image_embeds = vision_outputs.last_hidden_state
    sizes = getattr(vision_outputs, "token_sizes", None)
    source = getattr(vision_outputs, "token_source", None)
    runtime = getattr(vision_model, "turbo_runtime", None)
    bias = runtime.output_bias(sizes, source, qformer_dtype(qformer)) if runtime is not None else None
    if bias is not None and qformer.config._attn_implementation == "flex_attention":
        image_embeds = unmerge(image_embeds, source)
    elif bias is not None:
        return image_embeds, bias.to(image_embeds.device)
    return image_embeds, torch.ones(image_embeds.size()[:-1], dtype=torch.long, device=image_embeds.device)


def qformer_vision_inputs(
    model: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None, output_class: type, **kwargs
):
    """The first step of BLIP-2's and InstructBLIP's `get_image_features`: the Turbo vision outputs (wrapped in
    `output_class`, whose `vision_outputs` carries `token_sizes` and `token_source`), the image tokens and mask
    for the Q-Former (`qformer_image_inputs`) and the query tokens.

    Returns:
        `(outputs, image_embeds, image_attention_mask, query_tokens)`.
    """
    vision_outputs = model.vision_model(
        pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
    )
    outputs = output_class(
        last_hidden_state=vision_outputs.last_hidden_state,
        pooler_output=vision_outputs.pooler_output,
        hidden_states=vision_outputs.hidden_states,
        attentions=vision_outputs.attentions,
        vision_outputs=vision_outputs,
    )
    image_embeds, image_attention_mask = qformer_image_inputs(model.vision_model, vision_outputs, model.qformer)
    query_tokens = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    return outputs, image_embeds, image_attention_mask, query_tokens


__all__ = ["qformer_dtype", "qformer_image_inputs", "qformer_vision_inputs"]
