"""How many image tokens a (Turbo) LLaVA gives per image: the one count for the model, the processor and the
checks of the in-LLM reduction.

`image_tokens` runs the vision tower's `TurboRuntime.schedule` (the model's own runtime, or one built from a config
by `tower_runtime`), so every caller agrees with the model for `r`, lists, schedules, `min_tokens` and FLOP budgets.

Example:

```python
>>> from turbo_hf.modeling.llava_token_counts import feature_depth
>>> feature_depth(-2, 24)  # the default LLaVA feature layer needs all layers but the last
23
```
"""

from __future__ import annotations

import torch
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from .configuration_turbo import as_turbo_config
from .registry import adapter_by_name
from .schedules import LayerCost, layer_cost
from .turbo_encoder import TurboRuntime


def feature_depth(vision_feature_layer: int | list[int], num_layers: int) -> int:
    """Vision layers that must run to produce the selected hidden state(s) (`hidden_states[i]` is the output
    of `i` layers; negative indices count from the end, so -2 needs all layers but the last)."""
    layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    depths = []
    for layer in layers:
        depth = layer if layer >= 0 else num_layers + 1 + layer
        if not 0 <= depth <= num_layers:
            raise ValueError(
                f"`vision_feature_layer={vision_feature_layer}` is out of range for a vision tower of "
                f"{num_layers} layers."
            )
        depths.append(depth)
    return max(depths)


def clip_layer_cost(vision_config) -> LayerCost:
    """Per-token MACs of a CLIP layer of this config: `schedules.layer_cost` of such a layer built on the meta
    device (no weights), so a config alone gives the cost a patched model counts on its modules."""
    with torch.device("meta"):
        layer = CLIPEncoderLayer(vision_config)
    adapter = adapter_by_name("llava")
    return layer_cost(layer, adapter.attention_attr, adapter.mlp_attr)


def tower_tokens(vision_config, height: int | None = None, width: int | None = None) -> int:
    """Tokens entering the CLIP tower ([CLS] included) for an image of the config's size (or the given one)."""
    patch = vision_config.patch_size
    height = vision_config.image_size if height is None else height
    width = vision_config.image_size if width is None else width
    return (height // patch) * (width // patch) + 1


def tower_runtime(turbo_config, num_layers: int, cost: LayerCost) -> TurboRuntime:
    """The runtime a Turbo LLaVA gives its vision layers up to the feature layer ([CLS] first, never merged)."""
    return TurboRuntime(as_turbo_config(turbo_config), num_layers, cost, protect_first=True, summary_query="cls")


def image_tokens(runtime: TurboRuntime | None, num_tokens: int, select_strategy: str) -> int:
    """`<image>` placeholders for an image whose `num_tokens` tokens ([CLS] included) enter the vision tower.

    Args:
        runtime: the tower's Turbo runtime (layers up to the feature layer), or None for the stock count.
        num_tokens: tokens entering the tower.
        select_strategy: `vision_feature_select_strategy` (`"default"` drops [CLS], `"full"` keeps it).
    """
    if runtime is not None and runtime.num_layers and not runtime.config.restore_output:
        num_tokens -= sum(runtime.schedule(num_tokens))
    return num_tokens - int(select_strategy == "default")


def check_feature_layer(vision_feature_layer, turbo_config) -> None:
    """Refuse a list `vision_feature_layer` while tokens merge (its layers would hold different token counts)."""
    if not isinstance(vision_feature_layer, int) and as_turbo_config(turbo_config).removes_tokens:
        raise ValueError(
            f"`vision_feature_layer={list(vision_feature_layer)}` concatenates the hidden states of several layers "
            "token by token, but Turbo changes the number of tokens from layer to layer: use a single feature layer "
            "(an int, e.g. -2) or r=0."
        )


def image_token_count(config, turbo_config=None, height: int | None = None, width: int | None = None) -> int:
    """`<image>` placeholders per image for a (Turbo)LLaVA config: `image_tokens` of the tower up to the feature
    layer, with the layer cost the config gives.

    Args:
        config: a `LlavaConfig` or `TurboLlavaConfig`.
        turbo_config: the Turbo settings (default: `config.turbo_config`).
        height, width: image size in pixels (default: the vision config's `image_size`).
    """
    if turbo_config is None:
        turbo_config = getattr(config, "turbo_config", None)
    check_feature_layer(config.vision_feature_layer, turbo_config)
    vision = config.vision_config
    depth = feature_depth(config.vision_feature_layer, vision.num_hidden_layers)
    runtime = tower_runtime(turbo_config, depth, clip_layer_cost(vision))
    return image_tokens(runtime, tower_tokens(vision, height, width), config.vision_feature_select_strategy)


__all__ = [
    "check_feature_layer",
    "clip_layer_cost",
    "feature_depth",
    "image_token_count",
    "image_tokens",
    "tower_runtime",
    "tower_tokens",
]
