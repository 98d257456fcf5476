"""Loading models, image preprocessors and processors for the evaluation scripts; generation helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..modeling.patching import get_turbo_config, is_turbo_applied, remove_turbo
from .data import to_rgb
from .images import normalize, resize_center_crop
from .settings import Setting, UsageError, use_setting
from .local_paths import check_local_path

# The families (stock `model_type` -> name) each evaluation script runs; `check_family` refuses the others.
GENERATIVE_FAMILIES = {"blip": "BLIP", "blip-2": "BLIP-2", "instructblip": "InstructBLIP", "llava": "LLaVA-1.5"}
RETRIEVAL_FAMILIES = {"clip": "CLIP", "siglip": "SigLIP", "blip": "BLIP", "blip-2": "BLIP-2"}
CLASSIFICATION_FAMILIES = {"vit": "ViT", "dinov2": "DINOv2", "clip": "CLIP", "clip_vision_model": "CLIP vision",
                           "siglip": "SigLIP", "siglip_vision_model": "SigLIP vision"}


def _load_config(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as error:
        raise UsageError(f"Could not load a model config from {path!r}: {error}") from error


def _stock_type(config) -> str:
    """The stock `model_type` of a (possibly Turbo) config: that of its first stock base class
    (`TurboBlip2Config`, "turbo_blip_2" -> "blip-2")."""
    for cls in type(config).__mro__:
        model_type = getattr(cls, "model_type", "") or ""
        if model_type and not model_type.startswith("turbo"):
            return model_type
    return getattr(config, "model_type", "") or ""


def check_family(path: str, accepted: Mapping[str, str]) -> str:
    """The family (stock `model_type`) of the checkpoint at `path`, read from its config alone, so a script
    refuses a family it does not evaluate before any weights load.

    Raises:
        UsageError: naming the checkpoint's model type and the `accepted` ones (model type -> name).
    """
    path = check_local_path(path, "--model", UsageError)
    family = _stock_type(_load_config(path))
    if family not in accepted:
        names = ", ".join(f"{name} ({model_type})" for model_type, name in accepted.items())
        raise UsageError(f"--model {path!r} is a {family or 'unknown'!r} model; this script evaluates {names}.")
    return family


def load_model(path: str, auto_classes: Sequence[str], dtype: str | None = None, attn: str | None = None):
    """A model from a folder or Hub id, in eval mode, with any Turbo patch removed (the stock model).

    The class named by the checkpoint's `architectures` is used when transformers or turbo_hf has it;
    otherwise the first of `auto_classes` that loads. A local-looking `path` that does not exist
    (`turbo_hf.evaluation.local_paths`) raises a `UsageError` at once, without trying the Hub.
    """
    import transformers

    path = check_local_path(path, "--model", UsageError)
    kwargs = {}
    if dtype:
        kwargs["dtype"] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if attn:
        kwargs["attn_implementation"] = attn
    config = _load_config(path)
    package = sys.modules.get(__name__.rpartition(".")[0])  # turbo_hf: its Turbo classes
    candidates = []
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None) or getattr(package, name, None)
        if cls is not None:
            candidates.append(cls)
    candidates += [getattr(transformers, name) for name in auto_classes if hasattr(transformers, name)]
    errors = []
    for cls in candidates:
        try:
            model = cls.from_pretrained(path, **kwargs)
            break
        except Exception as error:  # try the next class
            errors.append(f"{cls.__name__}: {error}")
    else:
        raise UsageError(f"Could not load {path!r} with {', '.join(c.__name__ for c in candidates)}: " + "; ".join(errors))
    if is_turbo_applied(model):
        remove_turbo(model)
    return model.eval()


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


def image_preprocessor(path: str, model: nn.Module, image_size: int | None = None) -> Callable[[list], torch.Tensor]:
    """images (PIL) -> pixel values, with the checkpoint's image processor (at `image_size` px when given).

    Without a saved image processor: resize the shortest edge, centre crop to the model's image size,
    ImageNet normalisation.
    """
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except Exception:
        processor = None
    size = image_size or getattr(_vision_config(model.config), "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if processor is None:

        def fallback(images: list) -> torch.Tensor:
            rgb = [np.asarray(to_rgb(image), dtype=np.float32) / 255.0 for image in images]
            return normalize(torch.stack([resize_center_crop(image, size) for image in rgb]))

        return fallback
    kwargs = {}
    if image_size is not None:
        current = getattr(processor, "size", None) or {}
        if "shortest_edge" in current:
            kwargs = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
        else:
            kwargs = {"size": {"height": image_size, "width": image_size}}

    def run(images: list) -> torch.Tensor:
        return processor(images=[to_rgb(image) for image in images], return_tensors="pt", **kwargs)["pixel_values"]

    return run


def interpolation_kwargs(function: Callable, model: nn.Module, pixel_values: torch.Tensor) -> dict:
    """`{"interpolate_pos_encoding": True}` when the pixels are not the model's image size and `function`
    takes that argument (ViT, CLIP, SigLIP, BLIP); `{}` otherwise (DINOv2 always interpolates)."""
    if not needs_interpolation(model, pixel_values):
        return {}
    try:
        import inspect

        accepted = "interpolate_pos_encoding" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        accepted = False
    return {"interpolate_pos_encoding": True} if accepted else {}


def needs_interpolation(model: nn.Module, pixel_values: torch.Tensor) -> bool:
    """Whether the pixel size differs from the model's configured image size."""
    size = getattr(_vision_config(model.config), "image_size", None)
    if size is None:
        return False
    size = size if isinstance(size, (list, tuple)) else (size, size)
    return tuple(pixel_values.shape[-2:]) != tuple(size)


# Default prompts of the generative families (captioning, and VQA where `{question}` is filled in).
CAPTION_PROMPTS = {
    "blip": None,
    "blip-2": None,
    "instructblip": "A short image description:",
    "llava": "USER: <image>\nWrite a short caption for this image. ASSISTANT:",
}
VQA_PROMPTS = {
    "blip": "{question}",
    "blip-2": "Question: {question} Short answer:",
    "instructblip": "Question: {question} Short answer:",
    "llava": "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:",
}


def model_type_of(model: nn.Module) -> str:
    """The stock `model_type` of a (possibly Turbo) model: `turbo_blip` -> `blip`."""
    return _stock_type(model.config)


def load_processor(path: str, model: nn.Module):
    """The checkpoint's multimodal processor; left padding for decoder-only language models. A LLaVA model gets
    a `TurboLlavaProcessor` made of the checkpoint's parts, which `generation_inputs` syncs with the model's
    current setting (one `<image>` placeholder per merged token)."""
    from transformers import AutoProcessor

    from ..modeling.processing_turbo_llava import TurboLlavaProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception as error:
        raise UsageError(f"No processor (image processor + tokenizer) found with {path!r}: {error}") from error
    if model_type_of(model) == "llava" and not isinstance(processor, TurboLlavaProcessor):
        processor = TurboLlavaProcessor(
            image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=processor.patch_size,
            vision_feature_select_strategy=processor.vision_feature_select_strategy,
            chat_template=processor.chat_template, image_token=processor.image_token,
            num_additional_image_tokens=processor.num_additional_image_tokens,
        )
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and model_type_of(model) != "blip":
        tokenizer.padding_side = "left"
    return processor


def _setting_key(model: nn.Module) -> str | None:
    config = get_turbo_config(model)
    return None if config is None else json.dumps(config.settings(), sort_keys=True, default=str)


def inputs_by_setting(model: nn.Module, settings: Sequence[Setting], build: Callable[[], dict]) -> Callable[[], dict]:
    """Build the inputs under every setting now; returns a callable giving those of the setting the model is in
    (for timing: LLaVA's text holds one `<image>` per merged token, so its inputs differ between settings).

    The model is left stock."""
    built = {}
    try:
        for setting in settings:
            use_setting(model, setting)
            built[_setting_key(model)] = build()
    finally:
        if is_turbo_applied(model):
            remove_turbo(model)
    return lambda: built[_setting_key(model)]


def generation_inputs(
    processor, images: list, prompts: list[str] | None, device, dtype, model: nn.Module | None = None
) -> dict:
    """Processor outputs for a batch of images (and prompts), on the device, pixel values in `dtype`; a processor
    with `sync_with` (`TurboLlavaProcessor`) is first synced with `model`'s current setting."""
    if model is not None and hasattr(processor, "sync_with"):
        processor.sync_with(model)
    kwargs = {"images": [to_rgb(image) for image in images], "return_tensors": "pt"}
    if prompts is not None:
        kwargs.update(text=list(prompts), padding=True)
    encoded = processor(**kwargs)
    inputs = {}
    for key, value in encoded.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
            inputs[key] = value
    return inputs


def decode_generated(processor, output_ids: torch.Tensor, inputs: dict, prompts: list[str] | None) -> list[str]:
    """Generated text without the prompt (whether `generate` returned the prompt tokens or not)."""
    input_ids = inputs.get("input_ids")
    if input_ids is not None and output_ids.shape[1] >= input_ids.shape[1]:
        if torch.equal(output_ids[:, : input_ids.shape[1]].to(input_ids.device), input_ids):
            output_ids = output_ids[:, input_ids.shape[1] :]
    texts = processor.batch_decode(output_ids, skip_special_tokens=True)
    cleaned = []
    for index, text in enumerate(texts):
        text = text.strip()
        prompt = prompts[index] if prompts else None
        if prompt:
            visible = prompt.replace("<image>", "").strip()
            if visible and text.lower().startswith(visible.lower()):
                text = text[len(visible) :].strip()
        cleaned.append(text)
    return cleaned
