"""The LLaVA-NeXT half of the in-LLM image-token benchmark (`scripts/benchmark_llava_next_llm.py`): a LLaVA-NeXT-
shaped random model, its prompts with anyres images, and each batch measured by
`llm_reduction_benchmark.measure_settings` (prefill, decode, peak memory and KV cache against the stock model).

Random weights, scaled down from LLaVA-NeXT (336 px crops, 576 tokens per crop) so a run fits a small CPU:

- vision: a CLIP tower at 224 px crops, patch 14 (256 tokens per crop), 4 layers of width 64; anyres pinpoints
  224 x 448, 448 x 224 and 448 x 448;
- language model: a Llama with 32 layers (like the 7B), hidden 256, 8 heads, intermediate 688, vocabulary 1000;
- images: 224 x 448 px (base + 2 tiles: 784 tokens with its 16 `image_newline` tokens) and 448 x 448 px
  (base + 4 tiles: 1312 tokens), alone and together in one left-padded batch (two layouts, two token counts);
  each prompt is `<s>`, the image, ~40 text tokens.

`llm_keep` shares apply to each image's own count (newline tokens included). A real checkpoint (`checkpoint=`)
replaces the random model: the images are then one and two crops wide of its own crop size (`image_sizes`), its
pinpoints, image token, BOS and vocabulary come from its config. Random weights: no quality.

Example (2 decoder layers):

```python
>>> from turbo_hf.evaluation.llava_next_llm_benchmark import build_llava_next, llava_next_prompts
>>> model = build_llava_next(layers=2)
>>> inputs = llava_next_prompts(model, [(224, 448), (448, 448)])
>>> (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
[784, 1312]
```
"""

from __future__ import annotations

import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..modeling.configuration_turbo import TurboConfig
from .llm_reduction_benchmark import measure_settings, random_words, shared_variant, word_ids

IMAGE_TOKEN_ID, BOS = 999, 1
SIZES = [(224, 448), (448, 448)]  # `image_sizes` of the random model (224 px crops)


def build_llava_next(layers: int = 32, attn: str = "sdpa", checkpoint: str | None = None):
    """The scaled-down random LLaVA-NeXT (seed 0), or the checkpoint's model, in eval mode."""
    if checkpoint is not None:
        return LlavaNextForConditionalGeneration.from_pretrained(checkpoint, attn_implementation=attn).eval()
    vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=4, image_size=224, patch_size=14, projection_dim=64)
    text = dict(model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=layers,
                num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096, pad_token_id=0,
                bos_token_id=BOS, eos_token_id=2)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, pad_token_id=0,
                             image_grid_pinpoints=[[224, 448], [448, 224], [448, 448]])
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config).eval()


def image_sizes(config) -> list[tuple[int, int]]:
    """The benchmark's two image sizes `(height, width)` for a LLaVA-NeXT config: one crop by two (base + 2 tiles)
    and two by two (base + 4 tiles) of its crop size (`SIZES` for the random model's 224 px crops)."""
    crop = config.vision_config.image_size
    return [(crop, 2 * crop), (2 * crop, 2 * crop)]


def llava_next_prompts(model, sizes: list[tuple[int, int]], seed: int = 0) -> dict:
    """Left-padded prompts, BOS, one image of each `(height, width)` in `sizes` then ~40 text tokens (36..44 in a
    batch; ids of the config's vocabulary, `word_ids`), with random crops; each image gets the stock model's token
    count (`get_image_features`)."""
    config = model.config
    vision, text = config.vision_config, config.get_text_config()
    crop = vision.image_size
    crops = [image_size_to_num_patches(size, config.image_grid_pinpoints, crop) for size in sizes]
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(sizes), max(crops), vision.num_channels, crop, crop, generator=generator)
    shapes = torch.tensor(sizes)
    with torch.no_grad():
        counts = [f.shape[0] for f in model.model.get_image_features(pixels, shapes).pooler_output]
    texts = [40] if len(sizes) == 1 else [36 + (8 * i) // (len(sizes) - 1) for i in range(len(sizes))]
    bos = [] if text.bos_token_id is None else [text.bos_token_id]
    words = word_ids(text.vocab_size, [config.image_token_id, text.bos_token_id, text.eos_token_id, text.pad_token_id])
    rows = [bos + [config.image_token_id] * count + random_words(words, count_text, generator)
            for count, count_text in zip(counts, texts)]
    length = max(len(row) for row in rows)
    return {
        "input_ids": torch.tensor([[0] * (length - len(row)) + row for row in rows]),
        "attention_mask": torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows]),
        "pixel_values": pixels,
        "image_sizes": shapes,
    }


def run_llava_next(model, settings, size_sets, repeats: int, warmup: int, new_tokens: int) -> list[dict]:
    """Every batch of `size_sets` (a list of image sizes per batch) measured with `measure_settings`; a patched
    copy per setting that shares the model's weights (`shared_variant`). The first setting must be
    `("stock", None)`."""
    if not settings or settings[0][1] is not None:
        raise ValueError("`settings` must start with the stock model, `('stock', None)`.")
    results = []
    for sizes in size_sets:
        inputs = llava_next_prompts(model, sizes)
        counts = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()

        def build(turbo, inputs=inputs, counts=counts):
            variant = shared_variant(model, turbo)
            info = {"turbo_config": None if turbo is None else TurboConfig(**turbo).settings(),
                    "image_tokens_to_llm": " / ".join(str(count) for count in counts)}
            return variant, inputs, info

        rows = measure_settings(settings, build, repeats, warmup, new_tokens)
        label = " + ".join(f"{height}x{width}" for height, width in sizes)
        results.append({"resolution": label, "batch": len(sizes), "settings": rows})
    return results


__all__ = ["SIZES", "build_llava_next", "image_sizes", "llava_next_prompts", "run_llava_next"]
