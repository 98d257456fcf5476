"""The one attention path of the Turbo vision encoders and towers, through Transformers' attention interface.

Every family (ViT, DINOv2, CLIP, SigLIP, BLIP, BLIP-2, InstructBLIP) projects its queries, keys and values
the way its stock module does (separate `q_proj`/`k_proj`/`v_proj`, or one fused `qkv` split in three), then
calls `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)` with the `log(size)` bias as
the additive attention mask (or the model's own mask, or None: the stock computation). The forward returns
what Turbo scores as well: `(output, weights, queries, keys)`, queries and keys (B, H, N, Dh).

`turbo_flex_attention` is registered in that interface as `"turbo_flex"` (`attn_implementation="turbo_flex"`):
FlexAttention with the additive mask added to the logits by a `score_mod` (`log(size)` read per key), so the
bias needs no materialised (B, H, N, N) score bias; compiled on accelerators, the unfused reference on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention.flex_attention import flex_attention
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

TURBO_FLEX = "turbo_flex"
_compiled_flex: list[Callable] = []  # `torch.compile(flex_attention)`, built on first use off the CPU


def _flex_kernel(query: torch.Tensor) -> Callable:
    """FlexAttention as it should run here: inside a compiled graph or on CPU the plain function (on CPU its
    unfused reference), elsewhere compiled once (the fused kernel)."""
    if torch.compiler.is_compiling() or query.device.type == "cpu":
        return flex_attention
    if not _compiled_flex:
        _compiled_flex.append(torch.compile(flex_attention, dynamic=False))
    return _compiled_flex[0]


def turbo_flex_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """An attention function of Transformers' interface on `torch.nn.attention.flex_attention`.

    `attention_mask` is an additive float mask broadcastable to (B, H, Q, K) (Turbo's `log(size)` key bias
    (B, 1, 1, K), or the model's own mask, which `"turbo_flex"` builds the eager way: 0 or the dtype's minimum),
    or a boolean mask (True: attend), or None. It is added to each logit by a `score_mod` that reads it at
    [b, h, q, k] through a broadcast view, so a (B, 1, 1, K) bias costs K values, not B * H * Q * K. Returns the
    context (B, Q, H, Dh) and no weights, like the fused implementations.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.modeling.turbo_attention import turbo_flex_attention
    >>> q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    >>> bias = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0]).log()[None, None, None]
    >>> out, _ = turbo_flex_attention(None, q, k, v, bias, scaling=0.5)
    >>> expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
    >>> torch.allclose(out.transpose(1, 2), expected, atol=1e-5)
    True
    ```
    """
    if dropout > 0:
        raise ValueError(f"`{TURBO_FLEX}` attention has no dropout; got `dropout={dropout}` (call `model.eval()`).")
    score_mod = None
    if attention_mask is not None:
        bias = attention_mask
        if bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~bias, torch.finfo(query.dtype).min
            )
        batch, heads, q_len, k_len = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
        bias = bias.expand(batch, heads, q_len, k_len)

        def add_bias(score, b, h, q_idx, kv_idx):
            return score + bias[b, h, q_idx, kv_idx]

        score_mod = add_bias

    output = _flex_kernel(query)(
        query, key, value, score_mod=score_mod, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(TURBO_FLEX, turbo_flex_attention)
AttentionMaskInterface.register(TURBO_FLEX, eager_mask)


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


__all__ = ["TURBO_FLEX", "TurboAttentionMixin", "turbo_attention", "turbo_flex_attention"]
