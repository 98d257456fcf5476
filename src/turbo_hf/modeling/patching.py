"""`apply_turbo`, `remove_turbo` and the `turbo` context manager: reversible, weight-free patching."""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn
from transformers.utils import logging
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

from .configuration_turbo import FAMILY_SETTINGS, TurboConfig, as_turbo_config
from .registry import (FamilyAdapter, ReducibleEncoder, adapter_by_name, encoder_settings, find_adapter, held_model,
                       registered_adapters)
from .schedules import flops_fraction, layer_cost, token_counts
from .turbo_encoder import TurboRuntime

logger = logging.get_logger(__name__)

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


@dataclass
class TurboPatch:
    """What `apply_turbo` changed on a model, so `remove_turbo` can undo it exactly.

    `vision_models` are the main encoders, `encoders` the extra ones (`ReducibleEncoder`) as
    `(name in the adapter's extra_encoders, module)`; each of them holds a `turbo_runtime`.
    Pickles (`torch.save`, `copy.deepcopy`) by the adapter's name: the adapter itself holds functions.
    """

    config: TurboConfig
    adapter: FamilyAdapter
    swapped: list[tuple[nn.Module, type]]
    vision_models: list[nn.Module]
    encoders: list[tuple[str, nn.Module]] = field(default_factory=list)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["adapter"] = self.adapter.name
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["adapter"] = adapter_by_name(state["adapter"])
        state.setdefault("encoders", [])  # pickled before extra encoders existed
        self.__dict__.update(state)
        for module, _ in self.swapped:  # a fresh process has not registered the swapped classes yet
            _register_outputs(module)


def _register_outputs(module: nn.Module) -> None:
    if hasattr(module, "_can_record_outputs"):
        _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


def _turbo_classes() -> set[type]:
    return {turbo for adapter in registered_adapters() for mapping in adapter.class_maps() for turbo in mapping.values()}


_PATCH_TAG = "_turbo_in_patch"  # on every swapped module: the TurboPatch it belongs to


def _check_not_nested(model: nn.Module) -> None:
    """Refuse a model that holds (or sits inside) modules another `apply_turbo` call patched."""
    own = getattr(model, "_turbo_patch", None)
    for name, module in model.named_modules():
        tag = module.__dict__.get(_PATCH_TAG)
        if module is not model and getattr(module, "_turbo_patch", None) is not None:
            raise ValueError(
                f"`{name}` of this {type(model).__name__} is patched by Turbo on its own: call "
                f"`remove_turbo(model.{name})` before patching the whole model."
            )
        if tag is not None and tag is not own:
            where = f"`{name}` of this {type(model).__name__}" if name else f"This {type(model).__name__}"
            raise ValueError(
                f"{where} was patched by Turbo as part of an enclosing model: patch (or `remove_turbo`) that "
                "model instead; nested patches cannot be removed one by one."
            )


def _check_exact_classes(targets: list[nn.Module], class_map: dict[type, type]) -> None:
    """Refuse subclasses of the stock classes: swapping their class for the Turbo one would drop their code."""
    stock_classes = tuple(class_map)
    turbo_classes = tuple(_turbo_classes())
    for module in targets:
        cls = type(module)
        if cls in class_map or issubclass(cls, turbo_classes) or not isinstance(module, stock_classes):
            continue
        stock = next(base for base in cls.__mro__ if base in class_map)
        raise ValueError(
            f"{cls.__name__} subclasses the stock {stock.__name__}: Turbo replaces the class of a patched module "
            f"with {class_map[stock].__name__}, which would drop what {cls.__name__} changes. Patch a plain "
            f"{stock.__name__}, or build your subclass on turbo_hf's {class_map[stock].__name__}."
        )


def _check_attention_implementation(vision: nn.Module, config: TurboConfig) -> None:
    implementation = getattr(vision.config, "_attn_implementation", None)
    if config.removes_tokens and config.proportional_attention and implementation in FLASH_IMPLEMENTATIONS:
        raise ValueError(
            f"`proportional_attention=True` adds a log(size) bias that `{implementation}` cannot take. "
            "Load the model with attn_implementation='sdpa' or 'eager', or set proportional_attention=False."
        )


def _build_runtime(encoder: nn.Module, spec: FamilyAdapter | ReducibleEncoder, config: TurboConfig) -> TurboRuntime:
    """The runtime of one encoder (a main one with its family adapter, or an extra one with its spec)."""
    _check_attention_implementation(encoder, config)
    layers = spec.layers(encoder)
    runtime = TurboRuntime(
        config,
        num_layers=len(layers),
        cost=layer_cost(layers[0], spec.attention_attr, spec.mlp_attr),
        protect_first=spec.protect_first,
        summary_query=spec.summary_query,
    )
    runtime.schedule(spec.default_tokens(encoder.config))  # validates `r` against this encoder now
    return runtime


def _extra_encoders(
    model: nn.Module, adapter: FamilyAdapter, config: TurboConfig
) -> list[tuple[ReducibleEncoder, nn.Module]]:
    """The extra encoders the config asks for, as `(spec, module)`; refuses settings this model cannot take."""
    found = []
    for name, specs in encoder_settings().items():
        if getattr(config, name) is None:
            continue
        spec = next((spec for spec in adapter.extra_encoders if name in spec.settings), None)
        if spec is None or not spec.encoders(model):
            takes = " or ".join(dict.fromkeys(spec.description for spec in specs))
            raise ValueError(f"`{name}` configures {takes}; {type(model).__name__} has none.")
    for spec in adapter.extra_encoders:
        if spec.requested(config):
            for encoder in spec.encoders(model):
                if spec.validate is not None:
                    spec.validate(encoder, config)
                found.append((spec, encoder))
    return found


def is_turbo_applied(model: nn.Module) -> bool:
    """Whether `apply_turbo` has patched this model (or the UNet of this diffusers pipeline)."""
    return getattr(held_model(model), "_turbo_patch", None) is not None


def get_turbo_config(model: nn.Module) -> TurboConfig | None:
    """The `TurboConfig` a model was patched with, or None."""
    patch = getattr(held_model(model), "_turbo_patch", None)
    return patch.config if patch is not None else None


def turbo_plan(model: nn.Module, num_tokens: int | None = None, encoder_tokens: dict[str, int] | None = None) -> dict:
    """What a patched model does for an input of `num_tokens` tokens (default: its config's image size, which
    may differ from the size you feed: DINOv2 checkpoints say 518 px, so pass `num_tokens` for 224 px inputs).

    Args:
        model: a patched model.
        num_tokens: tokens entering the (first) main encoder.
        encoder_tokens: tokens entering each extra encoder, by its name (e.g. `{"text": 35}` for BLIP's ITM text
            encoder; default: the length its config allows).

    Returns:
        A dict with the per-layer `schedule`, the `token_counts` entering each layer (and the final count),
        and `flops_fraction`, the share of the stock encoder's FLOPs kept (the speed limit is its inverse).
        Each patched extra encoder adds an entry under its name (e.g. `"text"`) with the same three keys and
        the values of its settings.

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf import apply_turbo, turbo_plan
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=64, image_size=32, patch_size=8))
    >>> turbo_plan(apply_turbo(model, r=2))["token_counts"]
    [17, 15, 13]
    ```
    """
    patch = getattr(held_model(model), "_turbo_patch", None)
    if patch is None:
        raise ValueError(f"{type(model).__name__} is not patched: call `apply_turbo` first.")
    vision = patch.vision_models[0]
    if patch.adapter.build_runtime is not None:
        return vision.turbo_runtime.describe(num_tokens)
    plan = _runtime_plan(vision.turbo_runtime, patch.adapter.default_tokens(vision.config) if num_tokens is None
                         else num_tokens)
    encoder_tokens = encoder_tokens or {}
    for name, encoder in patch.encoders:
        spec = next(spec for spec in patch.adapter.extra_encoders if spec.name == name)
        tokens = encoder_tokens.get(name, spec.default_tokens(encoder.config))
        plan[name] = {**_runtime_plan(encoder.turbo_runtime, tokens),
                      **{setting: getattr(patch.config, setting) for setting in spec.settings}}
    return plan


def _runtime_plan(runtime: TurboRuntime, num_tokens: int) -> dict:
    schedule = runtime.schedule(num_tokens)
    return {
        "schedule": schedule,
        "token_counts": token_counts(schedule, num_tokens),
        "flops_fraction": flops_fraction(schedule, num_tokens, runtime.cost),
    }


def apply_turbo(model: nn.Module, config: TurboConfig | None = None, **kwargs) -> nn.Module:
    """Patch a stock Transformers model in place so its vision encoder merges tokens with Turbo.

    Settings of an extra encoder of the family (BLIP retrieval's ITM text encoder: `text_r`, `image_keep`)
    patch it in the same swap; models without such an encoder refuse them. A diffusers pipeline (not an
    `nn.Module`) is patched through its `.unet` (Stable Diffusion, `merge_ratio`); the pipeline is returned.
    Weights, parameter names and the `state_dict` do not change; `remove_turbo` restores the stock model
    exactly. Applying again replaces the previous settings. Patching is atomic: when any setting is refused,
    or a swap fails midway, the model stays exactly as it was (stock, or patched with its previous settings).

    Args:
        model: a supported model (`turbo_hf.supported_classes()` lists them).
        config: the settings (a `TurboConfig` or a dict of its fields); or give them as keyword arguments
            (`apply_turbo(model, r=16)`).

    Returns:
        The same model (or pipeline) object.

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf import TurboConfig, apply_turbo, remove_turbo
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=64, image_size=32, patch_size=8))
    >>> apply_turbo(model, TurboConfig(r=2)) is model
    True
    >>> _ = remove_turbo(model)
    ```
    """
    if config is None:
        config = TurboConfig(**kwargs)
    elif kwargs:
        raise ValueError("Pass either a `config` or keyword settings to `apply_turbo`, not both.")
    else:
        config = as_turbo_config(config)  # checks a given config again (after `config.mode = ...`)
    holder, model = model, held_model(model)
    adapter = find_adapter(model)
    for family, (takes, names) in FAMILY_SETTINGS.items():
        given = [name for name in names if getattr(config, name) is not None]
        if given and adapter.name != family:
            raise ValueError(f"`{given[0]}` configures {takes}; {type(model).__name__} does not take it.")
    _check_not_nested(model)
    # Everything that can refuse runs before anything changes: a refused config leaves the model as it was.
    if adapter.validate is not None:
        adapter.validate(model, config)
    elif config.reduces_llm_tokens:
        raise ValueError(
            f"`llm_layers`/`llm_keep` reduce image tokens inside a language model; {type(model).__name__} has "
            "none (they apply to LLaVA)."
        )
    if config.video_keep is not None and not adapter.merges_video:
        raise ValueError(
            f"`video_keep` merges a video's tokens before a language model; {type(model).__name__} has no such path "
            "(it applies to LlavaNextVideoForConditionalGeneration)."
        )
    if adapter.spatial_only and config.token_order != "spatial" and config.removes_tokens:
        raise ValueError(
            f"`token_order={config.token_order!r}` reorders the tokens of every layer; {type(model).__name__} needs "
            "them in their original order (text positions and masks, or a language model reading image tokens in "
            "raster order). Use token_order='spatial' (ToMe's merge decisions in spatial order: mode='tome')."
        )
    vision_models = adapter.vision_models(model)
    build = adapter.build_runtime or (lambda vision, config: _build_runtime(vision, adapter, config))
    runtimes = [(vision, build(vision, config)) for vision in vision_models]
    targets = [model] + [m for vision in vision_models for m in vision.modules()]
    if adapter.extra_modules is not None:
        targets += adapter.extra_modules(model)
    groups = [(targets, adapter.class_map)]
    extra = []
    for spec, encoder in _extra_encoders(model, adapter, config):
        extra.append((spec.name, encoder, _build_runtime(encoder, spec, spec.runtime_config(config))))
        groups.append((list(encoder.modules()), spec.class_map))
    for modules, class_map in groups:
        _check_exact_classes(modules, class_map)

    previous = get_turbo_config(model)
    if previous is not None:
        remove_turbo(model)
    try:
        _swap(model, adapter, config, groups, runtimes, extra)
    except BaseException:
        if is_turbo_applied(model):
            remove_turbo(model)
        if previous is not None:
            apply_turbo(model, previous)
        raise
    logger.info(f"Turbo applied to {type(model).__name__} ({adapter.name}): {len(model._turbo_patch.swapped)} "
                "modules patched.")
    return holder


def _swap(model, adapter, config, groups, runtimes, extra) -> None:
    """Give every target its Turbo class (recording each swap as it happens, so a failure can be undone).

    `groups` are `(modules, class_map)`: the main targets with the adapter's map, then each extra encoder's
    modules with its own; `runtimes` are `(vision, runtime)` and `extra` `(name, encoder, runtime)`.
    """
    swapped, seen = [], set()
    patch = model._turbo_patch = TurboPatch(config=config, adapter=adapter, swapped=swapped, vision_models=[])
    for targets, class_map in groups:
        stock_of = {turbo_class: stock_class for stock_class, turbo_class in class_map.items()}
        for module in targets:
            stock_class = stock_of.get(type(module), type(module))
            turbo_class = class_map.get(stock_class)
            if turbo_class is None or id(module) in seen:
                continue
            seen.add(id(module))
            swapped.append((module, stock_class))
            module.__dict__[_PATCH_TAG] = patch
            if type(module) is not turbo_class:
                _set_class(module, turbo_class)
                _register_outputs(module)
    for vision, runtime in runtimes:
        vision.turbo_runtime = runtime
        patch.vision_models.append(vision)
    for name, encoder, runtime in extra:
        encoder.turbo_runtime = runtime
        patch.encoders.append((name, encoder))


def _set_class(module: nn.Module, new_class: type) -> None:
    """Swap a module's class; a module that Accelerate dispatched (`device_map`, offloading) keeps its hook, whose
    wrapper calls the forward it saved (`_old_forward`, bound to the old class): that one follows the swap."""
    hooked = module.__dict__.get("_old_forward")
    module.__class__ = new_class
    if isinstance(hooked, types.MethodType) and hooked.__self__ is module:
        module._old_forward = types.MethodType(new_class.forward, module)


def apply_turbo_from_config(model: nn.Module) -> nn.Module:
    """Patch a model with the `turbo_config` its own config carries (used by the public Turbo classes)."""
    return apply_turbo(model, getattr(model.config, "turbo_config", None))


def remove_turbo(model: nn.Module) -> nn.Module:
    """Undo `apply_turbo`: every patched module gets its stock class back.

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf import apply_turbo, remove_turbo
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=64, image_size=32, patch_size=8))
    >>> type(remove_turbo(apply_turbo(model, r=2))).__name__
    'ViTModel'
    ```
    """
    holder, model = model, held_model(model)
    patch = getattr(model, "_turbo_patch", None)
    if patch is None:
        raise ValueError(f"{type(model).__name__} has no Turbo patch to remove: call `apply_turbo` first.")
    for module, stock_class in reversed(patch.swapped):
        _set_class(module, stock_class)
        module.__dict__.pop(_PATCH_TAG, None)
    for module in patch.vision_models + [encoder for _, encoder in patch.encoders]:
        module.__dict__.pop("turbo_runtime", None)
    del model._turbo_patch
    return holder


@contextmanager
def turbo(model: nn.Module, config: TurboConfig | None = None, **kwargs) -> Iterator[nn.Module]:
    """Context manager: Turbo with these settings inside the block; after it (even on error) the model is as it
    was before: stock, patched with its previous settings, or the Turbo class it was built as.

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> from turbo_hf import turbo
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=64, image_size=32, patch_size=8))
    >>> with turbo(model, r=2) as patched:
    ...     type(patched).__name__
    'TurboViTModel'
    ```
    """
    previous = get_turbo_config(model)
    apply_turbo(model, config, **kwargs)
    try:
        yield model
    finally:
        remove_turbo(model)
        if previous is not None:
            apply_turbo(model, previous)


__all__ = ["apply_turbo", "apply_turbo_from_config", "get_turbo_config", "is_turbo_applied", "remove_turbo", "turbo", "turbo_plan"]
