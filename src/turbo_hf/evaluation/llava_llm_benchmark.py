"""The LLaVA-1.5 half of the in-LLM image-token benchmark (`scripts/benchmark_llava_llm.py`): a LLaVA-shaped
random model, its prompts, and one batch measured by `llm_reduction_benchmark.measure_settings` (prefill, decode,
peak memory and KV cache of every setting against the stock model, interleaved).

Example (a 2-layer LLaVA-shaped model at 112 px, one round):

```python
>>> from turbo_hf.evaluation.llava_llm_benchmark import llava_shaped_model, run_batch
>>> model = llava_shaped_model(text_layers=2, image_size=112)
>>> result = run_batch(model, 1, [("stock", None), ("K=1 keep 16", {"llm_layers": [1], "llm_keep": [16]})],
...                    repeats=1, warmup=0, new_tokens=2)
>>> result["settings"]["K=1 keep 16"]["cache_tokens_per_layer"][1] < result["settings"]["stock"]["cache_tokens_per_layer"][1]
True
```
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo
from .llm_reduction_benchmark import measure_settings

IMAGE_TOKEN_ID = 999
BOS, USER, ASSISTANT, NEWLINE = 1, 5, 6, 7

Setting = tuple[str, dict | None]


def llava_shaped_model(text_layers: int = 32, attn: str = "sdpa", image_size: int = 336) -> LlavaForConditionalGeneration:
    """A LLaVA-1.5-shaped model with random weights (seed 0), scaled down in width: CLIP tower at `image_size` px,
    patch 14, 4 layers of width 64 (at 336 px, 576 image tokens reach the language model); a Llama language model
    with `text_layers` layers, hidden 256, 8 heads, intermediate 688, vocabulary 1000."""
    vision = dict(
        model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=64,
    )
    text = dict(
        model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=text_layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048, pad_token_id=0,
        bos_token_id=BOS, eos_token_id=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, pad_token_id=0)
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def llava_prompts(batch: int, image_tokens: int, image_size: int, seed: int = 0) -> tuple[dict, list[int]]:
    """Prompts `<s> USER: <image>... words \\n ASSISTANT:` with ~40 text tokens (36..44 in a batch), left-padded,
    and random pixels; returns the inputs and the text-token count of each row."""
    generator = torch.Generator().manual_seed(seed)
    text_counts = [40] if batch == 1 else [36 + (8 * i) // (batch - 1) for i in range(batch)]
    rows = []
    for count in text_counts:
        words = torch.randint(10, 990, (count - 5,), generator=generator).tolist()
        rows.append([BOS, USER] + [IMAGE_TOKEN_ID] * image_tokens + words + [NEWLINE, ASSISTANT, NEWLINE])
    length = max(len(row) for row in rows)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row) :] = torch.tensor(row)
        attention_mask[i, length - len(row) :] = 1
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}, text_counts


def variant_of(model: LlavaForConditionalGeneration, weights: dict, turbo: dict | None):
    """A copy of the stock `model` with the same weights, patched with `turbo` (None: stock)."""
    variant = type(model)(model.config).eval()
    variant.load_state_dict(weights)
    if turbo is not None:
        apply_turbo(variant, **turbo)
    return variant


def run_batch(
    model: LlavaForConditionalGeneration,
    batch: int,
    settings: Sequence[Setting],
    repeats: int = 3,
    warmup: int = 1,
    new_tokens: int = 32,
) -> dict:
    """Time and measure every setting (the first must be `("stock", None)`) on one batch of `batch` prompts."""
    if not settings or settings[0][1] is not None:
        raise ValueError("`settings` must start with the stock model, `('stock', None)`.")
    weights, image_size = model.state_dict(), model.config.vision_config.image_size
    stock_tokens = (image_size // model.config.vision_config.patch_size) ** 2
    text_counts: list[int] = []

    def build(turbo: dict | None):
        variant = variant_of(model, weights, turbo)
        # the placeholders: every patch per image, or the merged count when the vision tower merges
        image_tokens = stock_tokens if turbo is None else variant.model.num_image_tokens()
        inputs, counts = llava_prompts(batch, image_tokens, image_size)  # same words and pixels everywhere
        text_counts[:] = counts
        info = {"turbo_config": None if turbo is None else TurboConfig(**turbo).settings(),
                "image_tokens_to_llm": image_tokens}
        return variant, inputs, info

    info = measure_settings(list(settings), build, repeats, warmup, new_tokens)
    return {"batch": batch, "prompt_length": info["stock"]["prompt_length"], "text_tokens": text_counts, "settings": info}

__all__ = ["llava_prompts", "llava_shaped_model", "run_batch", "variant_of"]
