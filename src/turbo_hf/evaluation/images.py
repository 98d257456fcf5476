"""Image arrays to model inputs for the benchmarks: RGB in [0, 1], resize + centre crop, crops, ImageNet
normalisation (`transformers.image_utils.IMAGENET_DEFAULT_MEAN` / `STD`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) in [0, 1] -> ImageNet-normalised pixel values."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (images - mean) / std


def gray_to_pixels(images: np.ndarray, size: int, scale: float = 1.0) -> torch.Tensor:
    """Grayscale (B, h, w) with values in [0, scale] -> (B, 3, size, size) pixel values.

    Divided by `scale` (16 for sklearn digits), replicated to three channels, upscaled bilinearly,
    ImageNet-normalised.

    Example:

    ```python
    >>> import numpy as np
    >>> from turbo_hf.evaluation.images import gray_to_pixels
    >>> tuple(gray_to_pixels(np.zeros((2, 8, 8)), 28, scale=16.0).shape)
    (2, 3, 28, 28)
    ```
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) / scale)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return normalize(x.expand(-1, 3, -1, -1).contiguous())


def to_rgb01(image: np.ndarray) -> np.ndarray:
    """Any skimage/sklearn image (gray, RGB, RGBA; uint8, bool or float) -> float32 (h, w, 3) in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    else:
        image = image.astype(np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 4:  # composite RGBA on white
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + (1 - alpha)
    return np.clip(image, 0, 1)


def resize_center_crop(image: np.ndarray, size: int) -> torch.Tensor:
    """(h, w, 3) in [0, 1] -> (3, size, size): shortest edge to `size` (bicubic, antialiased), centre crop.

    Example:

    ```python
    >>> import numpy as np
    >>> from turbo_hf.evaluation.images import resize_center_crop
    >>> tuple(resize_center_crop(np.ones((30, 60, 3), dtype=np.float32), 16).shape)
    (3, 16, 16)
    ```
    """
    x = torch.as_tensor(image).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[0, :, top : top + size, left : left + size].clamp(0, 1)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, min_frac: float = 0.35) -> torch.Tensor:
    """A random square crop (side between `min_frac` and 1 of the short edge), resized to (3, size, size)."""
    h, w = image.shape[:2]
    side = int(rng.uniform(min_frac, 1.0) * min(h, w))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return resize_center_crop(image[top : top + side, left : left + side], size)


__all__ = ["gray_to_pixels", "normalize", "random_crop", "resize_center_crop", "to_rgb01"]
