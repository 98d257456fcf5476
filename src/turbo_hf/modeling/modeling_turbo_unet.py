"""Turbo for Stable Diffusion (diffusers' `UNet2DConditionModel`, the SD 1.x / 2.x UNets): image tokens merge before
each patched component of a transformer block and are unmerged after it, so every layer outside sees full maps.

Needs diffusers (`pip install turbo-hf[diffusion]`). `turbo_hf` imports this module only when an object from
diffusers is patched (`registry.OPTIONAL_FAMILIES`), so the other families never import diffusers.

In each patched `BasicTransformerBlock` (those at a latent downsampling of at most `max_downsample`), one merge
plan is made from the block's input tokens (`merging_grid.grid_plan`):

- destinations: one token per `merge_stride` (sx x sy) cell of the block's latent grid (its top-left token, or a
  seeded random one with `random_cell=True`); every other token is a source;
- redundancy R: a source's largest cosine similarity (of the hidden states, in float32) to the destinations;
- semantic value A: the attention the text prompt pays to each image token (text tokens as queries over the image
  tokens, with the query and key projections of the block's cross-attention, averaged over heads and text tokens),
  measured in the cross-attention of the previous patched block at the same resolution in the same UNet call. The
  first patched block of each resolution, and UNets called without text, have none: they merge by R alone;
- the `int(N * merge_ratio)` sources of highest information degree `R - alpha * A` (`mode="tome"`: R) merge into
  their most similar destination before every component in `merge_components`, and the component's output is
  copied back to every position a merged token stands for.

Classifier-free guidance batches (unconditional and conditional rows): every row gets its own plan from its own
tokens and text, so each row's output is what it would be alone (random draws are seeded by `seed`, the block and
the row's timestep). The attention processors the UNet has (SDPA's `AttnProcessor2_0` by default, or any other)
run unchanged, on fewer query and key tokens. Saving a patched UNet saves the stock one (weights never change).
"""

from __future__ import annotations

import contextvars
import json
import math
from dataclasses import dataclass, field

import torch
from torch import nn

try:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("Turbo for Stable Diffusion needs diffusers: `pip install turbo-hf[diffusion]`.") from error

from .configuration_turbo import TurboConfig
from .merging import merge_tokens, unmerge
from .merging_grid import cell_offsets, grid_plan
from .registry import FamilyAdapter, register_adapter

DEFAULT_COMPONENTS = ("self_attn",)
DEFAULT_STRIDE = (2, 2)
# TurboConfig settings of the transformer families that the UNet does not take, with their defaults
_NOT_FOR_THE_UNET = {"r": None, "flops_ratio": None, "llm_layers": None, "schedule": "constant", "min_tokens": 0,
                     "token_order": "spatial", "restore_output": False, "semantic_start_layer": 0}

_ACTIVE_CALL: contextvars.ContextVar["_UNetCall | None"] = contextvars.ContextVar("turbo_unet_call", default=None)


class UNetTurboRuntime:
    """The Turbo settings bound to one UNet, resolved (None settings take their defaults).

    Example:

    ```python
    >>> from diffusers import UNet2DConditionModel
    >>> from turbo_hf import TurboConfig
    >>> unet = UNet2DConditionModel(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    ...                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
    ...                             cross_attention_dim=8, attention_head_dim=2, layers_per_block=1, sample_size=16)
    >>> runtime = UNetTurboRuntime(unet, TurboConfig(merge_ratio=0.5))
    >>> runtime.components, runtime.stride, runtime.describe()["levels"]
    (('self_attn',), (2, 2), [{'downsample': 1, 'tokens': 256, 'merged': 128, 'blocks': 3}])
    ```
    """

    def __init__(self, unet: nn.Module, config: TurboConfig) -> None:
        self.config = config
        self.ratio = float(config.merge_ratio or 0.0)
        self.components = tuple(config.merge_components or DEFAULT_COMPONENTS)
        self.max_downsample = config.max_downsample or 1
        self.stride = tuple(config.merge_stride or DEFAULT_STRIDE)
        self.random_cell = bool(config.random_cell)
        self.score = config.score_settings()
        self.blocks = [module for module in unet.modules() if isinstance(module, BasicTransformerBlock)]
        self.levels = _block_levels(unet)
        self.sample_size = unet.config.sample_size

    @property
    def active(self) -> bool:
        """Whether any token merges (False at `merge_ratio` 0: the stock forward runs)."""
        return self.ratio > 0

    @property
    def needs_semantic(self) -> bool:
        """Whether the plans use the text's attention (`mode="turbo"` with `alpha > 0`, or `"semantic"`)."""
        return self.score["mode"] == "semantic" or (self.score["mode"] == "turbo" and self.score["alpha"] > 0)

    def merged_count(self, num_tokens: int, height: int, width: int) -> int:
        """Tokens merged in a block of a `height x width` grid: `int(N * merge_ratio)`, at most the sources."""
        cells = (height // self.stride[1]) * (width // self.stride[0])
        return min(int(num_tokens * self.ratio), num_tokens - cells) if cells else 0

    def describe(self, num_tokens: int | None = None) -> dict:
        """What `turbo_plan` reports for a square latent of `num_tokens` tokens (default: the config's
        `sample_size` squared): per patched resolution, its tokens, how many merge and how many blocks."""
        size = self.sample_size if num_tokens is None else math.isqrt(num_tokens)
        side = size if isinstance(size, int) else size[0]
        levels = []
        for downsample in sorted(set(self.levels.values())):
            if downsample > self.max_downsample:
                continue
            height = width = math.ceil(side / downsample)
            blocks = sum(1 for level in self.levels.values() if level == downsample)
            levels.append({"downsample": downsample, "tokens": height * width,
                           "merged": self.merged_count(height * width, height, width), "blocks": blocks})
        return {"merge_ratio": self.ratio, "components": list(self.components), "levels": levels}


def _block_levels(unet: nn.Module) -> dict[str, int]:
    """Downsampling of each transformer block, by its name in the UNet (for `describe`)."""
    downs = getattr(unet.config, "block_out_channels", ())
    levels = {}
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock):
            part, index = (name.split(".") + ["0"])[:2]
            index = int(index) if index.isdigit() else 0
            depth = {"down_blocks": index, "up_blocks": len(downs) - 1 - index}.get(part, len(downs) - 1)
            levels[name] = 2 ** depth
    return levels


@dataclass
class _UNetCall:
    """The state of one UNet forward: the latent size, each row's seeds, the text attention of the last block."""

    runtime: UNetTurboRuntime
    height: int
    width: int
    timesteps: list[float]
    semantic: dict[int, torch.Tensor] = field(default_factory=dict)  # token count -> (B, N) text attention
    index: dict[int, int] = field(default_factory=dict)

    def grid(self, num_tokens: int) -> tuple[int, int] | None:
        """The block's grid when it is at a patched downsampling (None otherwise)."""
        downsample = 1
        while downsample <= self.runtime.max_downsample:
            height, width = math.ceil(self.height / downsample), math.ceil(self.width / downsample)
            if height * width == num_tokens:
                return height, width
            downsample *= 2
        return None

    def seeds(self, block: nn.Module, salt: int) -> list[int]:
        """One seed per row, from `seed`, the block, the row's timestep and what it is for (`salt`)."""
        if not self.index:
            self.index.update({id(module): i for i, module in enumerate(self.runtime.blocks)})
        base = (self.runtime.score["seed"] * 1_000_003 + self.index.get(id(block), 0)) * 4 + salt
        return [(base * 1_000_033 + round(step * 1000)) % 2**62 for step in self.timesteps]

    def step(self, block: nn.Module, hidden_states: torch.Tensor) -> "_BlockStep | None":
        """The merge step of a block for these tokens, or None when nothing merges there."""
        grid = self.grid(hidden_states.shape[1])
        if grid is None:
            return None
        r = self.runtime.merged_count(hidden_states.shape[1], *grid)
        return None if r == 0 else _BlockStep(self, block, hidden_states, grid, r)


class _BlockStep:
    """One block's plan, applied around each component it merges."""

    def __init__(self, call: _UNetCall, block: nn.Module, hidden_states: torch.Tensor, grid, r: int) -> None:
        runtime, (height, width) = call.runtime, grid
        self.call, self.runtime = call, runtime
        cells = (height // runtime.stride[1]) * (width // runtime.stride[0])
        seeds = call.seeds(block, 0) if runtime.random_cell else None
        offsets = cell_offsets(cells, runtime.stride, seeds, hidden_states.device)
        score = runtime.score
        with torch.no_grad():
            self.plan = grid_plan(hidden_states, r, height, width, runtime.stride, offsets=offsets, mode=score["mode"],
                                  semantic=call.semantic.get(hidden_states.shape[1]), alpha=score["alpha"],
                                  alpha_scale=score["alpha_scale"], seeds=call.seeds(block, 1))
        self.ones = torch.ones(*hidden_states.shape[:2], 1, device=hidden_states.device)
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    def merge(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(merged tokens, sizes)` of these tokens under the block's plan."""
        if self._last is None or self._last[0] is not tokens:
            self._last = (tokens, merge_tokens(tokens, self.ones, self.plan, self.runtime.score["reduction"]))
        return self._last[1]

    def run(self, component: str, tokens: torch.Tensor, function) -> torch.Tensor:
        """`function(tokens)`, on the merged tokens and unmerged after when `component` is merged."""
        if component not in self.runtime.components:
            return function(tokens)
        return unmerge(function(self.merge(tokens)[0]), self.plan.new_index)

    def record_semantic(self, attention: nn.Module, tokens: torch.Tensor, text: torch.Tensor | None) -> None:
        """Measure the text's attention to the image tokens entering this cross-attention (on the merged tokens,
        with their `log(size)`, shared out over the positions each stands for) for the next block's plan."""
        if text is None or not self.runtime.needs_semantic:
            return
        merged, size = self.merge(tokens)
        with torch.no_grad():
            share = text_attention(attention, merged, text, size)
            per_position = unmerge(share[..., None], self.plan.new_index) / unmerge(size, self.plan.new_index)
        self.call.semantic[tokens.shape[1]] = per_position[..., 0]


def text_attention(attention: nn.Module, image: torch.Tensor, text: torch.Tensor, size: torch.Tensor | None = None):
    """(B, N) attention the text tokens pay to the image tokens through `attention`'s query and key projections
    (the text as queries over the image tokens, softmax over the image tokens, `log(size)` added for merged
    ones), averaged over heads and text tokens; computed in float32."""
    heads = attention.heads
    query = attention.to_q(image)
    key = attention.to_k(text)
    batch, length, width = query.shape
    query = query.view(batch, length, heads, width // heads).transpose(1, 2).float()
    key = key.view(batch, key.shape[1], heads, width // heads).transpose(1, 2).float()
    logits = torch.matmul(key, query.transpose(-1, -2)) * attention.scale
    if size is not None:
        logits = logits + size.float().log()[:, None, None, :, 0]
    return logits.softmax(dim=-1).mean(dim=(1, 2))


class TurboBasicTransformerBlock(BasicTransformerBlock):
    """diffusers' `BasicTransformerBlock` with Turbo merging inside a patched UNet's forward (stock otherwise)."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        call = _ACTIVE_CALL.get()
        step = None if call is None else call.step(self, hidden_states)
        if step is None:
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
        # Overrides diffusers.models.attention.BasicTransformerBlock.forward (v0.42.1) for the blocks apply_turbo
        # accepts (norm_type "layer_norm", no positional embedding, no GLIGEN fuser): the same steps, each
        # component through `step.run`.
        kwargs = dict(cross_attention_kwargs or {})
        if "gligen" in kwargs:
            raise ValueError("Turbo's UNet blocks do not take GLIGEN inputs (`cross_attention_kwargs['gligen']`).")
        if attention_mask is not None and "self_attn" in step.runtime.components:
            raise ValueError("A self-attention `attention_mask` over the image tokens cannot follow merged tokens: "
                             "leave 'self_attn' out of `merge_components` or pass no mask.")
        context = encoder_hidden_states if self.only_cross_attention else None
        attn_output = step.run("self_attn", self.norm1(hidden_states), lambda tokens: self.attn1(
            tokens, encoder_hidden_states=context, attention_mask=attention_mask, **kwargs))
        hidden_states = attn_output + hidden_states
        if self.attn2 is not None:
            norm_hidden_states = self.norm2(hidden_states)
            step.record_semantic(self.attn2, norm_hidden_states, encoder_hidden_states)
            attn_output = step.run("cross_attn", norm_hidden_states, lambda tokens: self.attn2(
                tokens, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs))
            hidden_states = attn_output + hidden_states
        ff_output = step.run("ff", self.norm3(hidden_states), self._feed_forward)
        return ff_output + hidden_states

    def _feed_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._chunk_size is None:
            return self.ff(tokens)
        # the stock `_chunked_feed_forward` needs the (merged) length to divide by the chunk size
        return torch.cat([self.ff(part) for part in tokens.split(self._chunk_size, dim=self._chunk_dim)],
                         dim=self._chunk_dim)


class TurboUNet2DConditionModel(UNet2DConditionModel):
    """diffusers' `UNet2DConditionModel` whose transformer blocks merge image tokens (built by `apply_turbo`)."""

    def forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        runtime = self.__dict__.get("turbo_runtime")
        if runtime is None or not runtime.active:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        if self.training and self.is_gradient_checkpointing:
            raise ValueError("Turbo's merge plans live in the UNet forward, which gradient checkpointing re-runs "
                             "without them: disable gradient checkpointing or call `remove_turbo` to train.")
        steps = torch.as_tensor(timestep).flatten().tolist()
        steps = steps * sample.shape[0] if len(steps) == 1 else steps
        call = _UNetCall(runtime, sample.shape[-2], sample.shape[-1], [float(step) for step in steps])
        token = _ACTIVE_CALL.set(call)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            _ACTIVE_CALL.reset(token)

    def to_json_string(self) -> str:
        """The stock config JSON: a saved patched UNet is a stock one, loadable without turbo_hf."""
        # Overrides diffusers.configuration_utils.ConfigMixin.to_json_string (v0.42.1): the stock class name
        config = json.loads(super().to_json_string())
        config["_class_name"] = UNet2DConditionModel.__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _validate(unet: nn.Module, config: TurboConfig) -> None:
    """Refuse the transformer families' settings, and blocks this forward does not cover, before any swap."""
    for name, default in _NOT_FOR_THE_UNET.items():
        if getattr(config, name) != default:
            hint = " Use `merge_ratio`." if name in ("r", "flops_ratio") else ""
            raise ValueError(f"`{name}` does not apply to {type(unet).__name__} (Turbo for Stable Diffusion takes "
                             f"`merge_ratio`, `merge_components`, `max_downsample`, `merge_stride`, `random_cell`, "
                             f"`mode`, `alpha`, `alpha_scale`, `reduction` and `seed`).{hint}")
    if not config.merge_ratio:
        return
    for name, block in unet.named_modules():
        if not isinstance(block, BasicTransformerBlock):
            continue
        if block.norm_type != "layer_norm" or block.pos_embed is not None or hasattr(block, "fuser"):
            raise ValueError(f"`{name}` is a {type(block).__name__} with norm_type={block.norm_type!r}, "
                             f"positional embedding {block.pos_embed is not None}, GLIGEN {hasattr(block, 'fuser')}: "
                             "Turbo covers the Stable Diffusion 1.x / 2.x blocks (norm_type 'layer_norm', neither).")


def _transformer_blocks(unet: nn.Module) -> nn.ModuleList:
    return nn.ModuleList(module for module in unet.modules() if isinstance(module, BasicTransformerBlock))


UNET_ADAPTER = register_adapter(
    FamilyAdapter(
        name="unet",
        model_classes=(UNet2DConditionModel,),
        vision_models=lambda unet: [unet],
        layers=_transformer_blocks,
        class_map={UNet2DConditionModel: TurboUNet2DConditionModel, BasicTransformerBlock: TurboBasicTransformerBlock},
        attention_attr=("attn1", "attn2"),
        mlp_attr="ff",
        protect_first=False,
        validate=_validate,
        build_runtime=UNetTurboRuntime,
        holder_attr="unet",
    )
)

__all__ = ["TurboBasicTransformerBlock", "TurboUNet2DConditionModel", "UNetTurboRuntime", "text_attention"]
