"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: videos (and images with them) reduced inside the language model.

A video is one visual item: all its frames' tokens are reduced together (`llm_keep` per video), so the same content
in consecutive frames can merge. Qwen3-VL puts a timestamp (text) and its own vision start/end tokens around every
frame; its video is still one item. The prompts are built without a processor (`prompts`), left-padded, with a
different layout in each row; the reference for `reduction="prune"` is the stock model without a cache with the
removed tokens masked as keys (`masked_reference` of `test_modeling_turbo_qwen2_vl.py`).
"""

import pytest
import torch
from test_modeling_turbo_qwen2_vl import FAMILIES, NEW, generate, masked_reference, stock_model, weights  # noqa: F401

from turbo_hf import apply_turbo, remove_turbo
from turbo_hf.modeling.compat import cache_of
from turbo_hf.modeling.llm_token_masks import STATE_ATTRIBUTE
from turbo_hf.modeling.llm_token_reduction import keep_count
from turbo_hf.testing.tiny_models import (
    QWEN_IMAGE_TOKEN, QWEN_PAD, QWEN_PATCH_DIM, QWEN_VIDEO_TOKEN, QWEN_VISION_END, QWEN_VISION_START,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# per row: its items, ("image", (h, w)) or ("video", (t, h, w)) in patches (t: temporal patches, 2 frames each)
ROWS = [
    [("image", (4, 4)), ("video", (3, 4, 4))],  # an image of 4 tokens, a video of 3 x 4 tokens
    [("video", (2, 4, 6))],  # a video of 2 x 6 tokens
]
TEXTS = [[7, 8, 9], [10, 11, 12, 13]]
FIRST_LAYER = {"qwen2_vl": 1, "qwen2_5_vl": 1, "qwen3_vl": 1}  # Qwen3-VL: after its one deepstack layer


def item_tokens(kind, grid) -> int:
    return (grid[0] if kind == "video" else 1) * grid[-2] * grid[-1] // 4


def prompts(name, rows=(0, 1)) -> dict:
    """Left-padded inputs of the rows `rows` of ROWS (each item's pixels drawn from its own seed, so a row alone
    gets the same pixels as in the batch)."""
    per_frame_groups = name == "qwen3_vl"
    sequences, types, pixels = [], [], {"image": [], "video": []}
    grids = {"image": [], "video": []}
    for row in rows:
        ids, kinds = [5], [0]
        for index, (kind, grid) in enumerate(ROWS[row]):
            t, h, w = (1, *grid) if kind == "image" else grid
            token, type_id = (QWEN_IMAGE_TOKEN, 1) if kind == "image" else (QWEN_VIDEO_TOKEN, 2)
            groups = [(frame, 1) for frame in range(t)] if per_frame_groups and kind == "video" else [(None, t)]
            for frame, span in groups:
                stamp = [] if frame is None else [20 + frame]  # Qwen3-VL: a timestamp before each frame
                count = span * h * w // 4
                ids += stamp + [QWEN_VISION_START] + [token] * count + [QWEN_VISION_END]
                kinds += [0] * len(stamp) + [0] + [type_id] * count + [0]
            grids[kind].append((t, h, w))
            generator = torch.Generator().manual_seed(100 * row + index)
            pixels[kind].append(torch.randn(t * h * w, QWEN_PATCH_DIM, generator=generator))
        sequences.append(ids + TEXTS[row])
        types.append(kinds + [0] * len(TEXTS[row]))
    length = max(len(ids) for ids in sequences)
    pad = [length - len(ids) for ids in sequences]
    batch = dict(
        input_ids=torch.tensor([[QWEN_PAD] * p + ids for p, ids in zip(pad, sequences)]),
        attention_mask=torch.tensor([[0] * p + [1] * len(ids) for p, ids in zip(pad, sequences)]),
        mm_token_type_ids=torch.tensor([[0] * p + kinds for p, kinds in zip(pad, types)]),
    )
    for kind, key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        if pixels[kind]:
            batch[key] = torch.cat(pixels[kind])
            batch[f"{kind}_grid_thw"] = torch.tensor(grids[kind])
    return batch


@pytest.mark.parametrize("name", FAMILIES)
def test_keeping_every_video_token_is_the_stock_model(weights, name):
    model = stock_model(weights, name)
    batch = prompts(name)
    with torch.no_grad():
        stock_logits = model(**batch).logits
    stock_ids = generate(model, batch)[0]
    apply_turbo(model, llm_layers=[FIRST_LAYER[name]], llm_keep=[10_000])  # above every item's count
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits[real], stock_logits[real])
    assert torch.equal(generate(model, batch)[0], stock_ids)
    apply_turbo(model, llm_layers=[FIRST_LAYER[name]], llm_keep=[0.5])
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits[:, -1], stock_logits[:, -1], atol=1e-4)
    remove_turbo(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, stock_logits)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("keep", [0.4, 3], ids=["share", "count"])  # per frame: other counts
def test_a_video_is_pruned_jointly_as_the_masked_stock_model(weights, name, keep):
    layers = [FIRST_LAYER[name], 3]
    model = apply_turbo(stock_model(weights, name, "eager"), reduction="prune", llm_layers=layers,
                        llm_keep=[keep, 1 if isinstance(keep, int) else 0.1])
    batch = prompts(name)
    ids, step_logits = generate(model, batch)
    with torch.no_grad():
        state = getattr(cache_of(model(**batch)), STATE_ATTRIBUTE)
    columns = state.columns[0]
    tokens = torch.where(columns >= 0, batch["input_ids"].gather(1, columns.clamp_min(0)), -1)
    for kind, token in (("image", QWEN_IMAGE_TOKEN), ("video", QWEN_VIDEO_TOKEN)):
        expected = [sum(keep_count(keep, item_tokens(k, grid)) for k, grid in ROWS[row] if k == kind) for row in (0, 1)]
        assert (tokens == token).sum(dim=1).tolist() == expected  # the whole video keeps `keep`, not each frame
    reference_ids, reference_logits, _ = masked_reference(stock_model(weights, name, "eager"), batch, state.columns,
                                                          layers)
    assert torch.equal(ids, reference_ids)
    torch.testing.assert_close(step_logits, reference_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_generate_with_videos_equals_one_by_one_dynamic_and_static(weights, name):
    model = apply_turbo(stock_model(weights, name), llm_layers=[FIRST_LAYER[name], 3], llm_keep=[0.5, 0.25])
    batch = prompts(name)
    ids, logits = generate(model, batch)
    stock = stock_model(weights, name)
    generate(stock, batch)
    assert torch.equal(model.model.rope_deltas, stock.model.rope_deltas)  # the stock positions continue
    for row in range(2):
        single_ids, single_logits = generate(model, prompts(name, rows=(row,)))
        assert torch.equal(single_ids, ids[row : row + 1])
        torch.testing.assert_close(single_logits, logits[:, row : row + 1], atol=1e-5, rtol=1e-5)
    static_ids, static_logits = generate(model, batch, cache_implementation="static")
    assert torch.equal(static_ids, ids) and static_logits.shape[0] == NEW
    torch.testing.assert_close(static_logits, logits, atol=1e-5, rtol=1e-5)


def test_eager_equals_sdpa_with_videos(weights):
    results = []
    for attn in ("eager", "sdpa"):
        model = apply_turbo(stock_model(weights, "qwen2_vl", attn), llm_layers=[1, 2], llm_keep=[5, 2])
        results.append(generate(model, prompts("qwen2_vl")))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
