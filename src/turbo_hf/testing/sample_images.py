"""Real photos for demos and calibration: scikit-image's bundled photos, or a folder of images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

BUILTIN_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def builtin_photos(names: tuple[str, ...] = BUILTIN_PHOTOS) -> list[tuple[str, Image.Image]]:
    """Colour photos shipped with scikit-image (`pip install scikit-image`), as RGB PIL images."""
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError("The built-in photos come from scikit-image: `pip install scikit-image`.") from error
    photos = []
    for name in names:
        array = np.asarray(getattr(data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        photos.append((name, Image.fromarray(array[..., :3].astype(np.uint8))))
    return photos


def folder_images(folder: str | os.PathLike) -> list[tuple[str, Image.Image]]:
    """Every image file in a folder (sorted by name), as RGB PIL images."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}.")
    return [(p.name, Image.open(p).convert("RGB")) for p in paths]


__all__ = ["BUILTIN_PHOTOS", "builtin_photos", "folder_images"]
