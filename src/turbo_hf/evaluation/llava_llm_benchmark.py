"""The LLaVA-1.5 half of the in-LLM image-token benchmark (`scripts/benchmark_llava_llm.py`): a LLaVA-shaped
random model (or a checkpoint's model, `build_llava`), the settings for its image-token count (`llava_settings`),
its prompts, and one batch measured by `llm_reduction_benchmark.measure_settings` (prefill, decode, peak memory and
KV cache of every setting against the stock model, interleaved).

A checkpoint's image size, patch size, feature layer and strategy, image token, BOS and vocabulary come from its
config; the settings are shares of its own image-token count and layer count.

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
from ..modeling.llava_token_counts import clip_layer_cost, feature_depth, image_tokens, tower_runtime, tower_tokens
from .llm_reduction_benchmark import measure_settings, random_words, shared_variant, word_ids

IMAGE_TOKEN_ID, BOS = 999, 1

Setting = tuple[str, dict | None]


def llava_shaped_config(text_layers: int = 32, image_size: int = 336) -> LlavaConfig:
    """The config of `llava_shaped_model`: CLIP tower at `image_size` px, patch 14, 4 layers of width 64 (at 336 px,
    576 image tokens reach the language model); a Llama with `text_layers` layers, hidden 256, 8 heads,
    intermediate 688, vocabulary 1000."""
    vision = dict(
        model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=64,
    )
    text = dict(
        model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=text_layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048, pad_token_id=0,
        bos_token_id=BOS, eos_token_id=2,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, pad_token_id=0)


def llava_shaped_model(text_layers: int = 32, attn: str = "sdpa", image_size: int = 336) -> LlavaForConditionalGeneration:
    """A LLaVA-1.5-shaped model with random weights (seed 0), scaled down in width (`llava_shaped_config`)."""
    config = llava_shaped_config(text_layers, image_size)
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def build_llava(text_layers: int = 32, attn: str = "sdpa", checkpoint: str | None = None) -> LlavaForConditionalGeneration:
    """The LLaVA-shaped random model (`llava_shaped_model`), or the checkpoint folder's model, in eval mode."""
    if checkpoint is not None:
        return LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation=attn).eval()
    return llava_shaped_model(text_layers, attn)


def stock_image_tokens(config: LlavaConfig) -> int:
    """`<image>` placeholders per image of the stock model: the tower's tokens at the config's image size, less
    [CLS] with the `"default"` feature strategy (576 for LLaVA-1.5's 336 px and patch 14)."""
    return image_tokens(None, tower_tokens(config.vision_config), config.vision_feature_select_strategy)


def llava_settings(config: LlavaConfig, layer: int = 2) -> list[Setting]:
    """The benchmark's settings for a LLaVA config, as shares of its stock image tokens `n` (`stock_image_tokens`):

    - `n // 4` kept before decoder `layer`, merged, then pruned;
    - `n // 2` kept before `layer` and `n // 8` before the middle layer (only if that comes after `layer`);
    - the vision tower merging `r` per layer up to the feature layer, about `n // 2` in all (its token count from
      the model's own schedule), alone and with `n // 8` kept before `layer`.

    For the random model (576 tokens, 32 layers, 3 tower layers up to the feature layer): keep 144; 288 then 72
    after layers 2 and 16; `r=96` (288 tokens), and that with 72 kept.
    """
    tokens, layers = stock_image_tokens(config), config.text_config.num_hidden_layers
    quarter, half, eighth, middle = tokens // 4, tokens // 2, tokens // 8, layers // 2
    settings: list[Setting] = [
        ("stock", None),
        (f"LLM K={layer} keep {quarter} (merge)", dict(llm_layers=[layer], llm_keep=[quarter])),
        (f"LLM K={layer} keep {quarter} (prune)", dict(llm_layers=[layer], llm_keep=[quarter], reduction="prune")),
    ]
    if middle > layer:
        settings.append((f"LLM K={layer},{middle} keep {half},{eighth} (merge)",
                         dict(llm_layers=[layer, middle], llm_keep=[half, eighth])))
    vision = config.vision_config
    depth = feature_depth(config.vision_feature_layer, vision.num_hidden_layers)
    r = half // depth
    if r:
        runtime = tower_runtime(TurboConfig(r=r), depth, clip_layer_cost(vision))
        merged = image_tokens(runtime, tower_tokens(vision), config.vision_feature_select_strategy)
        settings += [(f"vision r={r} ({merged} tokens)", dict(r=r)),
                     (f"vision r={r} + LLM K={layer} keep {eighth}", dict(r=r, llm_layers=[layer], llm_keep=[eighth]))]
    return settings


def llava_prompts(batch: int, image_tokens: int, image_size: int, seed: int = 0,
                  config: LlavaConfig | None = None) -> tuple[dict, list[int]]:
    """Prompts `<s> USER: <image>... words \\n ASSISTANT:` with ~40 text tokens (36..44 in a batch), left-padded,
    and random pixels; returns the inputs and the text-token count of each row.

    The ids and the pixels' channels are the config's (its image token, BOS; `USER`, `ASSISTANT`, the newline and
    the words from its vocabulary, `word_ids`), the random model's without one."""
    text = None if config is None else config.text_config
    image, vocab, bos, eos, pad = (
        (IMAGE_TOKEN_ID, 1000, BOS, 2, 0) if config is None
        else (config.image_token_id, text.vocab_size, text.bos_token_id, text.eos_token_id, text.pad_token_id)
    )
    special = [image, bos, eos, pad]
    user, assistant, newline = word_ids(vocab, special, low=5)[:3].tolist()
    words_from = word_ids(vocab, special + [user, assistant, newline])
    start = [] if bos is None else [bos]
    generator = torch.Generator().manual_seed(seed)
    text_counts = [40] if batch == 1 else [36 + (8 * i) // (batch - 1) for i in range(batch)]
    rows = []
    for count in text_counts:
        words = random_words(words_from, count - 5, generator)
        rows.append(start + [user] + [image] * image_tokens + words + [newline, assistant, newline])
    length = max(len(row) for row in rows)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row) :] = torch.tensor(row)
        attention_mask[i, length - len(row) :] = 1
    channels = 3 if config is None else config.vision_config.num_channels
    pixel_values = torch.randn(batch, channels, image_size, image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}, text_counts


def run_batch(
    model: LlavaForConditionalGeneration,
    batch: int,
    settings: Sequence[Setting],
    repeats: int = 3,
    warmup: int = 1,
    new_tokens: int = 32,
) -> dict:
    """Time and measure every setting (the first must be `("stock", None)`) on one batch of `batch` prompts; a
    patched copy per setting that shares the model's weights (`shared_variant`)."""
    if not settings or settings[0][1] is not None:
        raise ValueError("`settings` must start with the stock model, `('stock', None)`.")
    config = model.config
    image_size = config.vision_config.image_size
    text_counts: list[int] = []

    def build(turbo: dict | None):
        variant = shared_variant(model, turbo)
        # the placeholders: every patch per image, or the merged count when the vision tower merges
        tokens = stock_image_tokens(config) if turbo is None else variant.model.num_image_tokens()
        inputs, counts = llava_prompts(batch, tokens, image_size, config=config)  # same words and pixels everywhere
        text_counts[:] = counts
        info = {"turbo_config": None if turbo is None else TurboConfig(**turbo).settings(),
                "image_tokens_to_llm": tokens}
        return variant, inputs, info

    info = measure_settings(list(settings), build, repeats, warmup, new_tokens)
    return {"batch": batch, "prompt_length": info["stock"]["prompt_length"], "text_tokens": text_counts, "settings": info}


__all__ = ["build_llava", "llava_prompts", "llava_settings", "llava_shaped_config", "llava_shaped_model", "run_batch",
           "stock_image_tokens"]
