"""The one attention path of the Turbo vision encoders and towers, through Transformers' attention interface.

Every family (ViT, DINOv2, CLIP, SigLIP, BLIP, BLIP-2, InstructBLIP) projects its queries, keys and values
the way its stock module does (separate `q_proj`/`k_proj`/`v_proj`, or one fused `qkv` split in three), then
calls `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)` with the `log(size)` bias as
the additive attention mask (or the model's own mask, or None: the stock computation). The forward returns
what Turbo scores as well: `(output, weights, queries, keys)`, queries and keys (B, H, N, Dh).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def turbo_attention(
    module: nn.Module,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    dropout: float,
    eager_fn: Callable,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over per-head `query`, `keys`, `values` (B, H, N, Dh) with the implementation the module's config
    names (`eager_fn` for `"eager"`). Returns the context (B, N, H * Dh) and the weights (None for fused kernels).

    `attention_mask` is added to the logits. Under `flex_attention` an additive mask goes through flex's
    `position_bias` (indexed [b, h, q, kv], given as a broadcast view): its tensor-mask path builds a score mask
    that crashes on CPU (torch 2.13).
    """
    implementation = module.config._attn_implementation
    if attention_mask is not None and implementation == "flex_attention":
        kwargs["position_bias"] = attention_mask.expand(-1, query.shape[1], query.shape[2], -1)
        attention_mask = None
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_fn)
    output, weights = interface(
        module,
        query,
        keys,
        values,
        attention_mask,
        dropout=0.0 if not module.training else dropout,
        scaling=scaling,
        **kwargs,
    )
    return output.reshape(query.shape[0], query.shape[2], -1).contiguous(), weights


class TurboAttentionMixin:
    """The Turbo forward of a stock attention module: its projections, `turbo_attention`, its output projection.

    A family's subclass names what differs:

    - `turbo_fused_qkv`: the name of a fused `qkv` projection (BLIP, BLIP-2, InstructBLIP), or None for separate
      `q_proj`, `k_proj`, `v_proj`;
    - `turbo_out_proj`, `turbo_scaling`, `turbo_dropout`: attribute names of the output projection, the logits
      scale and the attention dropout (a float, or an `nn.Dropout` whose `p` is used);
    - `turbo_eager`: the family's eager attention function.
    """

    turbo_fused_qkv: str | None = None
    turbo_out_proj = "o_proj"
    turbo_scaling = "scaling"
    turbo_dropout = "attention_dropout"
    turbo_eager: Callable

    @property
    def turbo_scale(self) -> float:
        """The logits scale of this attention (what Turbo's semantic value uses too)."""
        return getattr(self, self.turbo_scaling)

    def _turbo_projections(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        if self.turbo_fused_qkv is None:
            projections = (self.q_proj, self.k_proj, self.v_proj)
            return tuple(proj(hidden_states).view(hidden_shape).transpose(1, 2) for proj in projections)
        fused_shape = (*hidden_states.shape[:-1], 3, -1, self.head_dim)
        mixed = getattr(self, self.turbo_fused_qkv)(hidden_states).reshape(fused_shape).permute(2, 0, 3, 1, 4)
        return mixed[0], mixed[1], mixed[2]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        # Copied from transformers.models.vit.modeling_vit.ViTAttention.forward (v5.24)
        # Copied from transformers.models.dinov2.modeling_dinov2.Dinov2Attention.forward (v5.24)
        # Copied from transformers.models.clip.modeling_clip.CLIPAttention.forward (v5.24)
        # Copied from transformers.models.siglip.modeling_siglip.SiglipAttention.forward (v5.24)
        # Copied from transformers.models.blip.modeling_blip.BlipAttention.forward (v5.24)
        # Copied from transformers.models.blip_2.modeling_blip_2.Blip2Attention.forward (v5.24)
        # Copied from transformers.models.instructblip.modeling_instructblip.InstructBlipAttention.forward (v5.24)
        # (the same computation in every family, with the mask reaching the attention function, which BLIP-2's
        # and InstructBLIP's stock forward hard-code to None; this one also returns the queries and keys)
        query, keys, values = self._turbo_projections(hidden_states)
        dropout = getattr(self, self.turbo_dropout)
        output, weights = turbo_attention(
            self,
            query,
            keys,
            values,
            attention_mask,
            scaling=self.turbo_scale,
            dropout=dropout.p if isinstance(dropout, nn.Dropout) else dropout,
            eager_fn=self.turbo_eager,
            **kwargs,
        )
        return getattr(self, self.turbo_out_proj)(output), weights, query, keys


__all__ = ["TurboAttentionMixin", "turbo_attention"]
