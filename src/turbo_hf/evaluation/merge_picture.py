"""`turbo-hf visualize`: a picture of what Turbo merges in one image, one colour per merged token
(drawn with `turbo_hf.evaluation.visualization`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo, remove_turbo
from .driver import UsageError, image_preprocessor, interpolation_kwargs, load_model, parse_modes, preset_base, to_rgb, vision_patch_grid
from .visualization import denormalize, draw_merges, merge_groups, side_by_side


def visualize_merges(
    model_path: str | os.PathLike,
    image_path: str | os.PathLike,
    r: int,
    out_path: str | os.PathLike,
    mode: str = "turbo",
    *,
    image_size: int | None = None,
    preset: str | None = None,
    alpha: float | None = None,
    seed: int = 0,
) -> dict:
    """Draw what Turbo merges in one image: the image and, next to it, every output token holding more than
    one patch as one coloured region (white borders between tokens; patches that stayed alone keep their
    pixels).

    Args:
        model_path: a model folder or Hub id of a supported model (stock or Turbo checkpoint).
        image_path: the image file.
        r: tokens removed per layer.
        out_path: the PNG to write.
        mode: `turbo`, `tome`, `semantic` or `random`.
        image_size: input size in pixels (default: the checkpoint's preprocessing).
        preset: a preset name or JSON path giving the other Turbo settings.
        alpha: overrides the preset's / default alpha.
        seed: colour seed (and the seed of the `random` mode).

    Returns:
        `{"path", "tokens_in", "tokens_out", "merged_groups", "grid", "turbo_config"}`.
    """
    from PIL import Image
    from transformers import AutoImageProcessor

    modes = [m for m in parse_modes(mode) if m != "stock"]
    if len(modes) != 1:
        raise UsageError(f"`mode` must be one of turbo, tome, semantic, random; got {mode!r}.")
    if not isinstance(r, int) or r < 1:
        raise UsageError(f"`r` must be a positive integer, got {r!r}.")
    if not Path(image_path).is_file():
        raise UsageError(f"Image {str(image_path)!r} does not exist.")
    model = load_model(str(model_path), ["AutoModel"])
    base, _ = preset_base(preset)
    settings = {**base, "mode": modes[0], "r": r, "seed": seed}
    if alpha is not None:
        settings["alpha"] = alpha
    try:
        config = TurboConfig(**settings)
        apply_turbo(model, config)
    except ValueError as error:
        raise UsageError(str(error)) from error
    try:
        image = to_rgb(Image.open(image_path))
        pixels = image_preprocessor(str(model_path), model, image_size)([image])
        pixels = pixels.to(next(model.parameters()).dtype)
        rows, cols, has_cls = vision_patch_grid(model, pixels)
        vision = model._turbo_patch.vision_models[0]
        with torch.inference_mode():
            output = vision(pixel_values=pixels, **interpolation_kwargs(vision.forward, model, pixels))
        source = output.token_source[0]
        groups = merge_groups(source, (rows, cols), has_cls=has_cls)
    finally:
        remove_turbo(model)
    try:
        processor = AutoImageProcessor.from_pretrained(str(model_path))
        mean, std = list(processor.image_mean), list(processor.image_std)
    except Exception:
        mean, std = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    shown = denormalize(pixels[0], mean, std)
    scale = max(1, -(-256 // max(shown.shape[:2])))  # draw small inputs at least 256 px wide
    shown = shown.repeat(scale, axis=0).repeat(scale, axis=1)
    tokens_in, tokens_out = rows * cols + int(has_cls), int(output.last_hidden_state.shape[1])
    label = "ToMe" if modes[0] == "tome" else f"{modes[0]} mode" if modes[0] != "turbo" else "Turbo"
    picture = side_by_side([(Image.fromarray(shown), draw_merges(shown, groups, seed=seed))],
                           title=f"{label} r={r}: {tokens_in} -> {tokens_out} tokens")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_path)
    counts = torch.bincount(torch.as_tensor(groups).flatten())
    return {
        "path": str(out_path),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "merged_groups": int((counts > 1).sum()),
        "grid": [rows, cols],
        "turbo_config": config.settings(),
    }


__all__ = ["visualize_merges"]
