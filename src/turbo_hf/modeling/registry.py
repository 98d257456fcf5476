"""The registry that maps stock Transformers classes to the family adapters that patch them."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)


@dataclass(frozen=True)
class ReducibleEncoder:
    """A further encoder of a family's models that Turbo reduces with settings of its own (BLIP's ITM text encoder
    with `text_r` / `image_keep`), patched and removed together with the main encoder(s) by `apply_turbo`.

    Attributes:
        name: key of its entry in `turbo_plan`, e.g. `"text"`.
        settings: the `TurboConfig` fields that configure it; any of them set (not None) patches it, and
            families (or models) without an encoder that takes them refuse them at `apply_turbo`.
        description: what takes the settings, for the refusal message (e.g. "the ITM text encoder of
            BlipForImageTextRetrieval").
        encoders: returns the modules that own its merging layers (each gets a `turbo_runtime`); empty for a
            model of the family that has none.
        layers: returns the `nn.ModuleList` of layers of such a module.
        class_map: stock class -> Turbo subclass, applied (by exact type) to those modules and everything inside.
        attention_attr: name(s) of the attention module(s) inside a layer (for FLOP budgets; the first one is
            the self-attention, whose width counts for the N^2 part).
        mlp_attr: name(s) of the MLP module(s) inside a layer.
        runtime_config: the view of the `TurboConfig` its runtime runs with (e.g. `r` taken from `text_r`).
        tokens_for_config: the default number of tokens of such a module, from its config.
        validate: called as `validate(encoder, config)` before anything is swapped; raises a `ValueError` for
            settings this encoder cannot run (a list longer than its layers).
        protect_first: whether token 0 never merges.
        summary_query: `"cls"` or `"mean"`: which query gives the semantic value.
    """

    name: str
    settings: tuple[str, ...]
    description: str
    encoders: Callable[[nn.Module], list[nn.Module]]
    layers: Callable[[nn.Module], nn.ModuleList]
    class_map: dict[type, type]
    attention_attr: str | tuple[str, ...]
    mlp_attr: str | tuple[str, ...]
    runtime_config: Callable[[object], object]
    tokens_for_config: Callable[[object], int]
    validate: Callable[[nn.Module, object], None] | None = None
    protect_first: bool = True
    summary_query: str = "cls"

    def requested(self, config) -> bool:
        """Whether a `TurboConfig` sets any of this encoder's settings."""
        return any(getattr(config, name) is not None for name in self.settings)

    def default_tokens(self, config) -> int:
        """Tokens such a module sees by default, from its config."""
        return self.tokens_for_config(config)


@dataclass(frozen=True)
class FamilyAdapter:
    """How Turbo patches one model family.

    Attributes:
        name: family name, e.g. `"vit"`.
        model_classes: the stock classes `apply_turbo` accepts for this family.
        vision_models: returns the modules that own the merging layers (each gets a Turbo forward): the vision
            towers, or the encoder itself for text families.
        layers: returns the `nn.ModuleList` of layers of such a module.
        class_map: stock class -> Turbo subclass, applied (by exact type) to the model itself, to the vision
            modules and to everything inside them; other modules (a text tower) are never touched.
        attention_attr: name(s) of the attention module(s) inside a layer (for FLOP budgets).
        mlp_attr: name(s) of the MLP module(s) inside a layer (for FLOP budgets).
        protect_first: whether token 0 is a [CLS] token that never merges.
        summary_query: `"cls"` or `"mean"`: which query gives the semantic value.
        tokens_for_config: the default number of tokens of a vision module, from its config.
        extra_modules: returns modules outside the vision modules that `class_map` also swaps (exactly these
            modules, not their children), e.g. the text cross-attention that must take the image tokens' bias.
        spatial_only: the order of the tokens carries meaning downstream (text positions and masks, a language
            model reading the image tokens in raster order): `token_order="tome"` is refused at `apply_turbo`.
        validate: called by `apply_turbo` as `validate(model, config)` before anything is swapped; raises a
            `ValueError` for settings this model cannot run (e.g. `llm_layers` beyond its language model).
            Families without it refuse the language-model settings (`llm_layers`).
        hub_classes: for each Turbo config class of the family (distinct `model_type`), the Auto class
            names and the public Turbo model classes registered for it.
        extra_encoders: further encoders reduced with settings of their own (`ReducibleEncoder`).
        merges_video: the family merges each video's tokens jointly before its language model (`video_keep`);
            the other families refuse `video_keep` at `apply_turbo`.
        build_runtime: called as `build_runtime(vision, config)` instead of building a transformer-layer
            `TurboRuntime` (the UNet's runtime); what it returns must have `describe(num_tokens)` for `turbo_plan`.
        holder_attr: an object that is not an `nn.Module` (a diffusers pipeline) and holds a model of the family
            under this attribute is patched through it (`apply_turbo(pipe)` patches `pipe.unet`).
    """

    name: str
    model_classes: tuple[type, ...]
    vision_models: Callable[[nn.Module], list[nn.Module]]
    layers: Callable[[nn.Module], nn.ModuleList]
    class_map: dict[type, type]
    attention_attr: str | tuple[str, ...]
    mlp_attr: str | tuple[str, ...]
    protect_first: bool = True
    summary_query: str = "cls"
    tokens_for_config: Callable[[object], int] | None = None
    hub_classes: dict[type, dict[str, type]] = field(default_factory=dict)
    extra_modules: Callable[[nn.Module], list[nn.Module]] | None = None
    validate: Callable[[nn.Module, object], None] | None = None
    spatial_only: bool = False
    extra_encoders: tuple[ReducibleEncoder, ...] = ()
    merges_video: bool = False
    build_runtime: Callable[[nn.Module, object], object] | None = None
    holder_attr: str | None = None

    def class_maps(self) -> list[dict[type, type]]:
        """The class map of the main encoder(s), then those of the extra encoders."""
        return [self.class_map] + [encoder.class_map for encoder in self.extra_encoders]

    def default_tokens(self, config) -> int:
        """Tokens the encoder sees at the config's image size ([CLS] included when there is one)."""
        if self.tokens_for_config is not None:
            return self.tokens_for_config(config)
        image, patch = config.image_size, config.patch_size
        image = image if isinstance(image, (list, tuple)) else (image, image)
        patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
        return (image[0] // patch[0]) * (image[1] // patch[1]) + int(self.protect_first)


_ADAPTERS: list[FamilyAdapter] = []

# Families whose stock classes come from an optional package: package -> the family module, imported (so it
# registers itself) the first time an object from that package is patched; the other families never import it.
OPTIONAL_FAMILIES = {"diffusers": "modeling_turbo_unet"}


def load_optional_family(obj: object) -> None:
    """Import the family module for an object from an optional package (a diffusers UNet or pipeline)."""
    for package in {cls.__module__.split(".", 1)[0] for cls in type(obj).__mro__}:
        if package in OPTIONAL_FAMILIES:
            importlib.import_module(f"{__package__}.{OPTIONAL_FAMILIES[package]}")


def held_model(obj: object) -> object:
    """The model a non-module holder (a diffusers pipeline) carries for a family's `holder_attr`; else `obj`."""
    if isinstance(obj, nn.Module):
        return obj
    load_optional_family(obj)
    for adapter in _ADAPTERS:
        held = getattr(obj, adapter.holder_attr, None) if adapter.holder_attr else None
        if isinstance(held, adapter.model_classes):
            return held
    return obj


def _share_weight_conversions(adapter: FamilyAdapter) -> None:
    """Let Turbo classes load checkpoints exactly like their stock classes.

    Transformers renames old checkpoint keys with conversions looked up by class name or `model_type`;
    the Turbo names get the stock ones (registered explicitly, so they also apply under remote code).
    """
    class_map = {stock: turbo for mapping in adapter.class_maps() for stock, turbo in mapping.items()}
    pairs = [(stock.__name__, turbo.__name__) for stock, turbo in class_map.items()]
    stock_of = {turbo: stock for stock, turbo in class_map.items()}
    for config_class, auto_classes in adapter.hub_classes.items():
        stock_config = next(base for base in config_class.__mro__[1:] if getattr(base, "model_type", ""))
        pairs.append((stock_config.model_type, config_class.model_type))
        # A stock checkpoint's config.json keeps the stock `model_type`, and Transformers skips `model_type`
        # conversions for classes from outside the library: register them under the Turbo class names too
        # (where the stock class has no class-specific mapping of its own).
        for model_class in dict.fromkeys(auto_classes.values()):
            stock = stock_of.get(model_class)
            if stock is not None and get_checkpoint_conversion_mapping(stock.__name__) is None:
                pairs.append((stock_config.model_type, model_class.__name__))
    for stock_name, turbo_name in pairs:
        conversions = get_checkpoint_conversion_mapping(stock_name)
        if conversions is not None:
            register_checkpoint_conversion_mapping(turbo_name, conversions, overwrite=True)


def register_adapter(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add a family adapter (a new family is one module that calls this)."""
    _ADAPTERS.append(adapter)
    _share_weight_conversions(adapter)
    return adapter


def registered_adapters() -> list[FamilyAdapter]:
    """Every registered family adapter."""
    return list(_ADAPTERS)


def adapter_by_name(name: str) -> FamilyAdapter:
    """The registered adapter called `name` (e.g. `"vit"`)."""
    for _ in range(2):
        for adapter in _ADAPTERS:
            if adapter.name == name:
                return adapter
        for package, module in OPTIONAL_FAMILIES.items():  # e.g. unpickling a patched UNet in a fresh process
            if importlib.util.find_spec(package) is not None:
                importlib.import_module(f"{__package__}.{module}")
    raise ValueError(f"No Turbo family called {name!r}; registered: {[a.name for a in _ADAPTERS]}.")


def supported_classes() -> list[str]:
    """Names of every stock class `apply_turbo` accepts."""
    return sorted(cls.__name__ for adapter in _ADAPTERS for cls in adapter.model_classes)


def encoder_settings() -> dict[str, list[ReducibleEncoder]]:
    """Each setting that configures an extra encoder, with the extra encoders (of every family) that take it."""
    found: dict[str, list[ReducibleEncoder]] = {}
    for adapter in _ADAPTERS:
        for encoder in adapter.extra_encoders:
            for name in encoder.settings:
                found.setdefault(name, []).append(encoder)
    return found


def find_adapter(model: nn.Module) -> FamilyAdapter:
    """The adapter for a model, or a `ValueError` that lists the supported classes."""
    load_optional_family(model)
    for adapter in _ADAPTERS:
        if isinstance(model, adapter.model_classes):
            return adapter
    raise ValueError(
        f"Turbo does not support {type(model).__name__}. Supported classes: {', '.join(supported_classes())}."
    )


__all__ = [
    "FamilyAdapter",
    "ReducibleEncoder",
    "adapter_by_name",
    "encoder_settings",
    "find_adapter",
    "held_model",
    "load_optional_family",
    "register_adapter",
    "registered_adapters",
    "supported_classes",
]
