"""Glue between the merge core and a transformer encoder: per-layer steps, the layer loop, outputs.

Nothing here names a model family. A family adapter gives its layers a forward that runs attention with
`turbo_attention.TurboAttentionMixin`, calls `LayerStep.reduce` between attention and MLP, and returns
`(hidden_states, size, source)`; `run_layers` carries that state from layer to layer explicitly, so
gradient checkpointing recomputes every layer with the sizes it saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from .configuration_turbo import TurboConfig
from .merging import (
    MergePlan,
    bipartite_plan,
    initial_source,
    key_metric,
    merge_tokens,
    proportional_bias,
    semantic_value,
    unmerge,
    update_source,
)
from .schedules import LayerCost, resolve_schedule, shortfall

logger = logging.get_logger(__name__)


@dataclass
class TurboModelOutputWithPooling(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` plus what Turbo merged.

    Args:
        token_sizes (`torch.Tensor` of shape `(batch_size, sequence_length, 1)`):
            How many input tokens each output token stands for (all ones when nothing was merged or when
            `restore_output=True`).
        token_source (`torch.Tensor` of shape `(batch_size, input_length)`):
            For each input token (position embedding order, [CLS] first), the index of the output token
            that holds it. `turbo_hf.unmerge(last_hidden_state, token_source)` restores the full length.
    """

    token_sizes: torch.Tensor | None = None
    token_source: torch.Tensor | None = None


def merged_key_bias(
    size: torch.Tensor, merged: bool, proportional_attention: bool, reduction: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """The one bias rule: the `log(size)` key bias (B, 1, 1, N) once tokens have merged, with proportional attention
    on and `reduction="merge"`; None otherwise, so attention computes exactly what the stock model does."""
    if merged and proportional_attention and reduction == "merge":
        return proportional_bias(size, dtype)
    return None


@dataclass(frozen=True)
class LayerStep:
    """What one layer does after attention: remove `r` tokens with the given settings.

    `token_order` is the order of the tokens after the step (`"spatial"` or ToMe's `"tome"`, see
    `bipartite_plan`).
    """

    layer_idx: int
    r: int
    merged_before: bool
    mode: str
    alpha: float
    alpha_scale: str
    reduction: str
    seed: int
    protect_first: bool
    summary_query: str
    proportional_attention: bool
    token_order: str = "spatial"

    def attention_bias(self, size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The `log(size)` logits bias once tokens have merged; None before (the stock computation)."""
        return merged_key_bias(size, self.merged_before, self.proportional_attention, self.reduction, dtype)

    def _summary(
        self, query: torch.Tensor, size: torch.Tensor, summary_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        if summary_index is not None:
            index = summary_index[:, None, None, None].expand(-1, query.shape[1], 1, query.shape[-1])
            return query.gather(2, index)
        if self.summary_query == "cls":
            return query[:, :, :1]
        weights = size.to(query.dtype)[:, None]
        return (query * weights).sum(dim=2, keepdim=True) / weights.sum(dim=2, keepdim=True)

    def plan(
        self,
        size: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        scaling: float,
        bias: torch.Tensor | None,
        **constraints,
    ) -> MergePlan:
        """The merge plan of this layer from its queries and keys (B, H, N, Dh).

        `constraints` go to `bipartite_plan` (`token_mask`, `protected`, `causal`), except `summary_index`
        (B,): the position of the summary token of each row when it is not token 0.
        """
        summary_index = constraints.pop("summary_index", None)
        semantic = None
        if self.mode in ("turbo", "semantic"):
            semantic = semantic_value(self._summary(query, size, summary_index), keys, scaling, bias)
        generator = None
        if self.mode == "random":
            generator = torch.Generator().manual_seed(self.seed * 10_007 + self.layer_idx)
        return bipartite_plan(
            key_metric(keys),
            self.r,
            mode=self.mode,
            semantic=semantic,
            alpha=self.alpha,
            alpha_scale=self.alpha_scale,
            protect_first=self.protect_first,
            generator=generator,
            token_order=self.token_order,
            **constraints,
        )

    def reduce(
        self,
        hidden: torch.Tensor,
        size: torch.Tensor,
        source: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        scaling: float,
        bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Remove `r` tokens from `hidden` (B, N, C), given the layer's queries and keys (B, H, N, Dh)."""
        if self.r == 0:
            return hidden, size, source
        plan = self.plan(size, query, keys, scaling, bias)
        hidden, size = merge_tokens(hidden, size, plan, self.reduction)
        return hidden, size, update_source(source, plan)


class TurboRuntime:
    """Turbo settings bound to one encoder: resolves the layer steps for each input length (cached).

    Args:
        config: the `TurboConfig`.
        num_layers: layers in the encoder.
        cost: per-token cost of a layer, for FLOP budgets.
        protect_first: whether token 0 is a [CLS] token that never merges.
        summary_query: `"cls"` (the [CLS] query gives the semantic value) or `"mean"` (a size-weighted mean
            query, for encoders without [CLS]).
    """

    def __init__(
        self, config: TurboConfig, num_layers: int, cost: LayerCost, protect_first: bool, summary_query: str
    ) -> None:
        self.config = config
        self.num_layers = num_layers
        self.cost = cost
        self.protect_first = protect_first
        self.summary_query = summary_query
        self._steps: dict[int, list[LayerStep]] = {}
        self._warned_lengths: set[int] = set()  # input lengths whose clamped request was already reported
        self._applied = _frozen_settings(config)  # what was checked and applied: a later change is refused

    def output_bias(
        self, size: torch.Tensor | None, source: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The `log(size)` key bias, (B, 1, 1, N'), that a consumer of the encoder's merged output needs
        (cross-attention, attention pooling); None when no token merged or proportional attention is off, so
        the consumer computes exactly what it does in the stock model."""
        if size is None or source is None:
            return None
        merged = size.shape[1] != source.shape[1]
        return merged_key_bias(size, merged, self.config.proportional_attention, self.config.reduction, dtype)

    def schedule(self, num_tokens: int) -> list[int]:
        """Tokens removed by each layer for an input of `num_tokens` tokens.

        A request that cannot be met (more tokens than the bipartite split or `min_tokens` allow, a FLOP budget
        below what merging can reach) is clamped with one warning per input length, naming the request and what
        is applied.
        """
        config = self.config
        request = dict(
            r=config.r,
            flops_ratio=config.flops_ratio,
            schedule=config.schedule,
            min_tokens=config.min_tokens,
            num_layers=self.num_layers,
            num_tokens=num_tokens,
            cost=self.cost,
            protect_first=self.protect_first,
        )
        resolved = resolve_schedule(**request)
        if num_tokens not in self._warned_lengths:
            self._warned_lengths.add(num_tokens)
            reason = shortfall(request, resolved)
            if reason is not None:
                logger.warning(f"Turbo: {reason}")
        return resolved

    def steps(self, num_tokens: int) -> list[LayerStep]:
        """One `LayerStep` per layer for an input of `num_tokens` tokens (cached; under `torch.compile` they are
        built while tracing, so the graph guards on the settings and not on the state of the cache)."""
        if torch.compiler.is_compiling():
            return self._build_steps(num_tokens)
        self.check_unchanged()
        if num_tokens not in self._steps:
            self._steps[num_tokens] = self._build_steps(num_tokens)
        return self._steps[num_tokens]

    def check_unchanged(self) -> None:
        """Refuse to run with settings changed after Turbo was applied (`model.config.turbo_config.r = 8`): they
        were checked against this model when applied, and a silent partial effect would be worse than an error."""
        current = _frozen_settings(self.config)
        if current != self._applied:
            changed = ", ".join(f"{name} {old!r} -> {new!r}" for (name, old), (_, new) in zip(self._applied, current)
                                if old != new)
            raise RuntimeError(
                f"The Turbo settings of this model were changed after it was patched ({changed}); they take effect only "
                "when applied. Apply them with `turbo_hf.apply_turbo(model, TurboConfig(...))` (or "
                "`apply_turbo(model, model.config.turbo_config)` for the changed config), or for one block with "
                "`with turbo_hf.turbo(model, r=...):`."
            )

    def _build_steps(self, num_tokens: int) -> list[LayerStep]:
        config = self.config
        settings = config.score_settings()
        steps, merged = [], False
        for idx, r in enumerate(self.schedule(num_tokens)):
            mode = settings["mode"]
            if mode == "turbo" and idx < settings["semantic_start_layer"]:
                mode = "tome"
            steps.append(
                LayerStep(
                    layer_idx=idx,
                    r=r,
                    merged_before=merged,
                    mode=mode,
                    alpha=settings["alpha"],
                    alpha_scale=settings["alpha_scale"],
                    reduction=settings["reduction"],
                    seed=settings["seed"],
                    protect_first=self.protect_first,
                    summary_query=self.summary_query,
                    proportional_attention=config.proportional_attention,
                    token_order=config.token_order,
                )
            )
            merged = merged or r > 0
        return steps


def _frozen_settings(config: TurboConfig) -> tuple:
    """The settings as a tuple of `(name, value)`, lists frozen, so that a later in-place change shows."""
    return tuple((name, tuple(value) if isinstance(value, list) else value) for name, value in config.settings().items())


def check_attention_mask(attention_mask: torch.Tensor | None, steps: list[LayerStep]) -> None:
    """Refuse a padding mask while tokens merge: vision encoders merge whole sequences, and a mask over the
    input tokens cannot follow tokens that move.

    Call it on the mask the *caller* passed (2D or 4D), before the model builds its own: a model that turns
    `attention_mask=None` into an all-True 4D mask (ViT and DINOv2 do under `torch.export`, through
    `create_bidirectional_mask`) must drop that mask itself while merging (`vision_attention_mask`), never look
    at its values (a data-dependent check would break export).
    """
    if attention_mask is not None and any(step.r for step in steps):
        raise ValueError(
            "`attention_mask` is not supported while Turbo removes tokens from a vision encoder; "
            "pass `attention_mask=None` or use `r=0`."
        )


def run_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    runtime: TurboRuntime,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run Turbo layers, carrying `(hidden_states, size, source)` from one to the next.

    Returns:
        The final hidden states (unmerged to the input length when `restore_output` is set), their sizes
        (B, N', 1) and the source map (B, N).
    """
    batch, num_tokens, _ = hidden_states.shape
    if isinstance(num_tokens, torch.Tensor):  # `torch.jit.trace` gives sizes as 0-d tensors: the schedule needs an int
        num_tokens = int(num_tokens)
    steps = runtime.steps(num_tokens)
    check_attention_mask(attention_mask, steps)
    if torch.jit.is_tracing() and any(step.r for step in steps):
        raise RuntimeError(
            "TorchScript cannot trace Turbo's token merging (`torch.jit.trace`, and `torch.onnx.export(..., "
            "dynamo=False)`, which traces with it: its alias analysis has no schema for the boolean `scatter_` "
            "the merge step uses). Export with `torch.export.export(model, (pixel_values,))` or "
            "`torch.onnx.export(model, (pixel_values,), dynamo=True)`; with r=0 the model traces as the stock one."
        )
    size = torch.ones(batch, num_tokens, 1, device=hidden_states.device, dtype=torch.float32)
    source = initial_source(batch, num_tokens, hidden_states.device)
    for layer, step in zip(layers, steps):
        hidden_states, size, source = layer(hidden_states, size, source, step, attention_mask, **kwargs)
        # sizes are counts, never differentiable; but reentrant checkpointing marks every float output of a
        # checkpointed layer as requiring grad, and a `log(size)` bias with that history, read again when a later
        # checkpointed layer (a text decoder's cross-attention) is recomputed, would backpropagate through this
        # layer's checkpoint a second time
        size = size.detach()
    if runtime.config.restore_output:
        hidden_states = unmerge(hidden_states, source)
        size = torch.ones(batch, num_tokens, 1, device=hidden_states.device, dtype=torch.float32)
        source = initial_source(batch, num_tokens, hidden_states.device)
    return hidden_states, size, source


__all__ = [
    "LayerStep",
    "TurboModelOutputWithPooling",
    "TurboRuntime",
    "check_attention_mask",
    "merged_key_bias",
    "run_layers",
]
