"""The value checks behind `TurboConfig`: each raises a `ValueError` naming the setting and what it allows."""

from __future__ import annotations

UNET_COMPONENTS = ("self_attn", "cross_attn", "ff")
UNET_DOWNSAMPLES = (1, 2, 4, 8)


def allowed(name: str, value: object, choices: tuple) -> None:
    """Refuse a `value` of setting `name` that is not one of `choices`, naming them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def non_negative_int(name: str, value: object) -> None:
    """Refuse anything but an integer >= 0 (bools included) for setting `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")


def per_layer_r(name: str, value: object, schedule: str) -> int | list[int] | None:
    """`r` (or `text_r`) checked: None, a non-negative integer, or a non-empty list of them (with a constant
    schedule); a tuple becomes a list."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"`{name}` must not be an empty list.")
        for entry in value:
            non_negative_int(name, entry)
        if schedule != "constant":
            raise ValueError(
                f"`schedule={schedule!r}` spreads an integer `{name}`; a list `{name}` already is a schedule: "
                "use `schedule='constant'`."
            )
    elif value is not None:
        non_negative_int(name, value)
    return value


def keep_ratios(value: object) -> list[float] | None:
    """`image_keep` checked: None or a non-empty, non-increasing list of ratios in (0, 1] starting at 1.0."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"`image_keep` must be a non-empty list of ratios in (0, 1] (or None), got {value!r}.")
    for ratio in value:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"`image_keep` ratios must be numbers in (0, 1], got {ratio!r} in {list(value)}.")
    if value[0] != 1:
        raise ValueError(
            f"`image_keep[0]` must be 1.0: the first cross-attention layer has no ranking yet, got {value[0]!r}."
        )
    if any(later > earlier for earlier, later in zip(value, value[1:])):
        raise ValueError(f"`image_keep` must not increase (dropped image tokens cannot come back), got {list(value)}.")
    return [float(ratio) for ratio in value]


def video_keep(value: object) -> None:
    """`video_keep` checked: None, an integer >= 1 or a float in (0, 1)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    if not (isinstance(value, float) and 0 < value < 1):
        raise ValueError(f"`video_keep` must be an integer >= 1 (tokens per video), a float in (0, 1) (their share) "
                         f"or None, got {value!r}.")


def llm_reduction_settings(llm_layers, llm_keep) -> tuple[list[int] | None, list | None]:
    """`llm_layers` / `llm_keep` checked and normalised to lists (an int or a float becomes a one-entry list)."""
    layers, keep = llm_layers, llm_keep
    if layers is None and keep is None:
        return None, None
    if layers is None or keep is None:
        raise ValueError("`llm_layers` and `llm_keep` go together: give both or neither.")
    layers = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else list(layers)
    keep = [keep] if isinstance(keep, (int, float)) and not isinstance(keep, bool) else list(keep)
    for value in layers:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`llm_layers` must hold decoder layer indices >= 1, got {llm_layers!r}.")
    if layers != sorted(set(layers)):
        raise ValueError(f"`llm_layers` must be strictly increasing, got {llm_layers!r}.")
    kinds = {type(value) for value in keep}
    if kinds == {float}:
        for value in keep:
            if not 0 < value < 1:
                raise ValueError(f"`llm_keep` shares must be floats in (0, 1), got {value!r} in {keep!r}.")
    elif kinds == {int}:
        for value in keep:
            non_negative_int("llm_keep", value)
    else:
        raise ValueError(
            "`llm_keep` entries are all token counts per image (ints >= 0) or all shares of each image's tokens "
            f"(floats in (0, 1)), got {keep!r}."
        )
    if len(keep) != len(layers):
        raise ValueError(f"`llm_keep` needs one count per entry of `llm_layers`: {keep!r} for {layers!r}.")
    if keep != sorted(keep, reverse=True):
        raise ValueError(f"`llm_keep` must not increase from one layer to the next, got {keep!r}.")
    return layers, keep


def unet_settings(config) -> tuple[list[str] | None, list[int] | None]:
    """The UNet settings of `config` checked; returns `merge_components` and `merge_stride` as lists."""
    components, stride = config.merge_components, config.merge_stride
    if components is not None:
        components = list(components) if isinstance(components, (list, tuple)) else components
        if not isinstance(components, list) or not components or len(set(components)) != len(components) or \
                set(components) - set(UNET_COMPONENTS):
            raise ValueError(f"`merge_components` must be a non-empty list of distinct entries of "
                             f"{list(UNET_COMPONENTS)}, got {config.merge_components!r}.")
    if config.max_downsample is not None:
        allowed("max_downsample", config.max_downsample, UNET_DOWNSAMPLES)
    if stride is not None:
        stride = list(stride) if isinstance(stride, (list, tuple)) else stride
        if not isinstance(stride, list) or len(stride) != 2 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in stride) or stride == [1, 1]:
            raise ValueError(f"`merge_stride` must be [sx, sy], two positive integers (not [1, 1]), got {stride!r}.")
    if config.random_cell is not None and not isinstance(config.random_cell, bool):
        raise ValueError(f"`random_cell` must be True, False or None, got {config.random_cell!r}.")
    if config.merge_ratio is not None:
        sx, sy = stride or (2, 2)
        limit = 1 - 1 / (sx * sy)
        ratio = config.merge_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= limit:
            raise ValueError(f"`merge_ratio` must be a number in [0, {limit:g}] (at most all but one token of each "
                             f"{sx} x {sy} cell of `merge_stride` merge), got {ratio!r}.")
    return components, stride


__all__ = [
    "UNET_COMPONENTS", "UNET_DOWNSAMPLES", "allowed", "keep_ratios", "llm_reduction_settings", "non_negative_int",
    "per_layer_r", "unet_settings", "video_keep",
]
