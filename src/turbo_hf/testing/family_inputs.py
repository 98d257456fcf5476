"""Inputs of the family tester's in-LLM cases (`family_tester.CASES`, the `-llm` and Qwen-VL ones): batches whose rows
hold images of different sizes (so different token counts and, for Qwen, different grids) yet need no padding, the
text after the images filling each row to one length.

Each builder is `(batch, model, turbo_config) -> inputs`, as `FamilyCase.make_inputs`; `split_qwen` cuts a Qwen-VL
batch into one-sample batches (its `pixel_values` and `image_grid_thw` are flat over the images, not per row).
"""

from __future__ import annotations

import torch
from torch import nn

from . import tiny_models
from ..modeling.configuration_turbo import TurboConfig

Inputs = dict[str, object]

# Qwen-VL rows, cycled over the batch: (the (h, w) patch grid of each image, the text length after the images).
# Image tokens: 4 + 2, 6, 4; every row is 14 ids long (<bos>, vision start/end around each image, the text).
QWEN_ROWS = [([(4, 4), (2, 4)], 3), ([(6, 4)], 5), ([(2, 8)], 7)]
# LLaVA-NeXT-style rows, cycled: two image sizes of one crop count (two anyres tiles + the base image each) whose
# packed token counts differ (the unpadded tile grids are 8 x 16 and 16 x 8, one newline token per row)
NEXT_SIZES = [(32, 64), (64, 32)]
NEXT_TEXT = 5  # text ids after the image of the row with the most image tokens


def _text(length: int, seed: int, low: int = 10, high: int = 100) -> list[int]:
    return torch.randint(low, high, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def qwen_tokens(grid: tuple[int, int]) -> int:
    """Image tokens of a Qwen-VL image of patch grid `grid` (t = 1, the 2x2 merger)."""
    return grid[0] * grid[1] // 4


def qwen_batch(batch: int, model: nn.Module | None = None, turbo: TurboConfig | None = None) -> Inputs:
    """A Qwen-VL batch of `batch` rows of `QWEN_ROWS` (cycled): images of different grids, no padding."""
    rows = [QWEN_ROWS[i % len(QWEN_ROWS)] for i in range(batch)]
    texts = [_text(length, seed=2 + i) for i, (_, length) in enumerate(rows)]
    inputs = tiny_models.qwen_inputs([grids for grids, _ in rows], texts, seed=1)
    if not bool(inputs["attention_mask"].all()):
        raise AssertionError("`QWEN_ROWS` must give rows of one length (the family tester's batches have no padding).")
    return inputs


def split_qwen(inputs: Inputs) -> list[Inputs]:
    """A Qwen-VL batch as one-sample batches: each row with its own images' grid rows and patches."""
    images = (inputs["input_ids"] == tiny_models.QWEN_VISION_START).sum(dim=1).tolist()
    grid = inputs["image_grid_thw"]
    patches = grid.prod(dim=-1).tolist()
    singles, first = [], 0
    for row, count in enumerate(images):
        start, end = sum(patches[:first]), sum(patches[: first + count])
        one = {k: v[row : row + 1] if torch.is_tensor(v) else v for k, v in inputs.items()}
        one["image_grid_thw"], one["pixel_values"] = grid[first : first + count], inputs["pixel_values"][start:end]
        singles.append(one)
        first += count
    return singles


def most_qwen_tokens() -> int:
    """The most tokens of one image in `QWEN_ROWS`."""
    return max(qwen_tokens(grid) for grids, _ in QWEN_ROWS for grid in grids)


def _next_pixels(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops and sizes of `batch` images whose sizes cycle through `NEXT_SIZES`."""
    sizes = torch.tensor([NEXT_SIZES[i % len(NEXT_SIZES)] for i in range(batch)])
    crops = 1 + (NEXT_SIZES[0][0] // tiny_models.IMAGE_SIZE) * (NEXT_SIZES[0][1] // tiny_models.IMAGE_SIZE)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, crops, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, generator=generator)
    return pixels, sizes


def next_counts(model: nn.Module, pixels: torch.Tensor, sizes: torch.Tensor) -> list[int]:
    """Each image's packed token count (base crop, unpadded tiles, newline tokens), as the model gives it."""
    inner = next(m for m in model.modules() if hasattr(m, "pack_image_features"))
    with torch.no_grad():
        return [features.shape[0] for features in inner.get_image_features(pixels, sizes).pooler_output]


def next_batch(batch: int, model: nn.Module, turbo: TurboConfig | None = None) -> Inputs:
    """A LLaVA-NeXT / OneVision batch whose rows cycle through `NEXT_SIZES` (one image each): different packed token
    counts (the stock ones: the tower gives the full grid back), the text filling each row to one length."""
    pixels, sizes = _next_pixels(batch)
    counts = next_counts(model, pixels, sizes)
    most = max(counts)
    image_token = model.config.image_token_id
    rows = [[2] + [image_token] * count + _text(NEXT_TEXT + most - count, seed=2 + i) for i, count in enumerate(counts)]
    return {"pixel_values": pixels, "image_sizes": sizes, "input_ids": torch.tensor(rows)}


def most_next_tokens(model: nn.Module) -> int:
    """The most packed tokens of one image of `next_batch` (what `llm_keep` must reach to remove nothing)."""
    return max(next_counts(model, *_next_pixels(len(NEXT_SIZES))))
