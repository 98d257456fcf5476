"""How many image tokens a (Turbo) LLaVA gives per image: one place for the model and the processor.

The counts run the same `TurboRuntime.schedule` as the model, so a processor that uses them agrees with the
model for `r`, lists, schedules, `min_tokens` and FLOP budgets.

Example:

```python
>>> from turbo_hf.modeling.llava_token_counts import feature_depth
>>> feature_depth(-2, 24)  # the default LLaVA feature layer needs all layers but the last
23
```
"""

from __future__ import annotations

from .configuration_turbo import as_turbo_config
from .schedules import LayerCost
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
    """Per-token MACs of a CLIP layer from its config (what `patching.layer_cost` counts on the modules)."""
    hidden, intermediate = vision_config.hidden_size, vision_config.intermediate_size
    return LayerCost(
        attention_per_token=4 * hidden * hidden, mlp_per_token=2 * hidden * intermediate, hidden_size=hidden
    )


def tower_tokens(vision_config, height: int | None = None, width: int | None = None) -> int:
    """Tokens entering the CLIP tower ([CLS] included) for an image of the config's size (or the given one)."""
    patch = vision_config.patch_size
    height = vision_config.image_size if height is None else height
    width = vision_config.image_size if width is None else width
    return (height // patch) * (width // patch) + 1


def merged_token_count(turbo_config, num_tokens: int, num_layers: int, cost: LayerCost) -> int:
    """Tokens left after `num_layers` Turbo layers for an input of `num_tokens` tokens ([CLS] included).

    The same `TurboRuntime.schedule` the model runs, so a processor that calls this agrees with the model for
    `r`, lists, schedules, `min_tokens` and FLOP budgets (a budget resolves per input length; LLaVA inputs
    have one fixed length).
    """
    config = as_turbo_config(turbo_config)
    if config.restore_output or num_layers == 0:
        return num_tokens
    runtime = TurboRuntime(config, num_layers=num_layers, cost=cost, protect_first=True, summary_query="cls")
    return num_tokens - sum(runtime.schedule(num_tokens))


def check_feature_layer(vision_feature_layer, turbo_config) -> None:
    if not isinstance(vision_feature_layer, int) and as_turbo_config(turbo_config).removes_tokens:
        raise ValueError(
            f"`vision_feature_layer={list(vision_feature_layer)}` concatenates the hidden states of several layers "
            "token by token, but Turbo changes the number of tokens from layer to layer: use a single feature layer "
            "(an int, e.g. -2) or r=0."
        )


def image_token_count(config, turbo_config=None, height: int | None = None, width: int | None = None) -> int:
    """`<image>` placeholders per image for a (Turbo)LLaVA config: the merged token count of the vision tower
    up to the feature layer, minus [CLS] under the `"default"` feature strategy.

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
    count = merged_token_count(turbo_config, tower_tokens(vision, height, width), depth, clip_layer_cost(vision))
    return count - int(config.vision_feature_select_strategy == "default")


__all__ = [
    "check_feature_layer",
    "clip_layer_cost",
    "feature_depth",
    "image_token_count",
    "merged_token_count",
    "tower_tokens",
]
