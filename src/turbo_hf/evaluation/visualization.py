"""Pictures of what Turbo merged: every merged token drawn as one coloured region over the image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def merge_groups(token_source: torch.Tensor, grid: tuple[int, int], has_cls: bool = True) -> np.ndarray:
    """The output token holding each patch, as a (rows, cols) grid, for one image's source map (N0,)."""
    source = token_source.detach().cpu().numpy()
    if has_cls:
        source = source[1:]
    rows, cols = grid
    if source.shape[0] != rows * cols:
        raise ValueError(f"`token_source` has {source.shape[0]} patches, the grid {rows}x{cols} needs {rows * cols}.")
    return source.reshape(rows, cols)


def denormalize(pixel_values: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """A preprocessed (3, H, W) image back to (H, W, 3) uint8."""
    image = pixel_values.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def draw_merges(image: np.ndarray, groups: np.ndarray, seed: int = 0, opacity: float = 0.55) -> Image.Image:
    """Overlay merge groups on an image.

    Patches that stand alone keep their pixels; each group of merged patches gets one colour, and the
    borders between different tokens are drawn in white.

    Args:
        image: (H, W, 3) uint8, covering the patch grid exactly.
        groups: (rows, cols) output-token id of every patch (from `merge_groups`).
        seed: colour seed.
        opacity: colour strength over merged groups.

    Example:

    ```python
    >>> import numpy as np
    >>> from turbo_hf.evaluation.visualization import draw_merges
    >>> picture = draw_merges(np.zeros((4, 4, 3), np.uint8), np.array([[0, 0], [1, 2]]))
    >>> picture.size
    (4, 4)
    ```
    """
    rows, cols = groups.shape
    height, width = image.shape[:2]
    patch_h, patch_w = height // rows, width // cols
    pixel_groups = np.kron(groups, np.ones((patch_h, patch_w), dtype=groups.dtype))
    canvas = image[: rows * patch_h, : cols * patch_w].astype(np.float32)
    counts = np.bincount(groups.ravel())
    colours = np.random.default_rng(seed).integers(40, 255, size=(counts.shape[0], 3)).astype(np.float32)
    merged = counts[pixel_groups] > 1
    canvas[merged] = (1 - opacity) * canvas[merged] + opacity * colours[pixel_groups[merged]]
    border = np.zeros(pixel_groups.shape, dtype=bool)
    border[1:, :] |= pixel_groups[1:, :] != pixel_groups[:-1, :]
    border[:, 1:] |= pixel_groups[:, 1:] != pixel_groups[:, :-1]
    canvas[border] = 255
    return Image.fromarray(canvas.astype(np.uint8))


def side_by_side(pairs: list[tuple[Image.Image, Image.Image]], gap: int = 8, title: str | None = None) -> Image.Image:
    """Rows of (original, merged) pictures in one image, under a one-line `title` when given.

    Example:

    ```python
    >>> from PIL import Image
    >>> from turbo_hf.evaluation.visualization import side_by_side
    >>> tile = Image.new("RGB", (20, 10))
    >>> side_by_side([(tile, tile)]).size, side_by_side([(tile, tile)], title="r=16: 257 -> 65 tokens").size
    ((64, 26), (64, 46))
    ```
    """
    from PIL import ImageDraw

    header = 20 if title else 0
    width = max(a.width + b.width for a, b in pairs) + 3 * gap
    height = header + sum(max(a.height, b.height) for a, b in pairs) + (len(pairs) + 1) * gap
    sheet = Image.new("RGB", (width, height), "white")
    if title:
        ImageDraw.Draw(sheet).text((gap, 4), title, fill="black")
    top = gap + header
    for left_image, right_image in pairs:
        sheet.paste(left_image, (gap, top))
        sheet.paste(right_image, (2 * gap + left_image.width, top))
        top += max(left_image.height, right_image.height) + gap
    return sheet


__all__ = ["denormalize", "draw_merges", "merge_groups", "side_by_side"]
