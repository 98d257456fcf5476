"""LLaVA-NeXT-Video and LLaVA-OneVision: videos (and images with them) reduced inside the language model, and the
`log(size)` bias of LLaVA-NeXT-Video's jointly merged video tokens (`video_keep`) in every layer of the language
model, on tiny random models fed ids and pixels directly.

A video is one visual item (all its frames' tokens, OneVision's closing `image_newline` included): `llm_keep`
applies per video. The bias reference is the stock language model fed the same merged features with an explicit
4D mask that adds `log(size)` to each merged video token's key column, run without a cache.
"""

import pytest
import torch

from test_llava_next_llm_reduction import (  # noqa: F401
    NEW, check_rows_alone_and_static, generate, logits, stock_model, weights,
)

from turbo_hf import apply_turbo, remove_turbo
from turbo_hf.modeling.compat import cache_of
from turbo_hf.modeling.llm_token_reduction import keep_count
from turbo_hf.testing import tiny_models

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE, VIDEO = tiny_models.LLAVA_IMAGE_TOKEN, tiny_models.LLAVA_VIDEO_TOKEN
VIDEO_FAMILIES = ["llava_next_video", "llava_onevision"]
IMAGE_SIZE = (32, 64)  # two anyres tiles and the base crop
FRAMES = 4
TEXTS = [[7, 8, 9], [10, 11, 12, 13, 14]]


def pixels(seed: int, shape) -> torch.Tensor:
    return torch.randn(*shape, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE,
                       generator=torch.Generator().manual_seed(seed))


def counts(model) -> tuple[int, int]:
    """The image's and a video's token counts, as the model gives them."""
    inner = model.model
    with torch.no_grad():
        image = inner.get_image_features(pixels(0, (1, 3)), torch.tensor([IMAGE_SIZE])).pooler_output[0].shape[0]
        video = inner.get_video_features(pixels(1, (1, FRAMES))).pooler_output.shape[1]
    return image, video


def batch_inputs(model, rows=(0, 1)) -> dict:
    """Left-padded rows: row 0 an image then a video, row 1 a video; then text."""
    image_count, video_count = counts(model)
    sequences = [([2] + [IMAGE] * image_count if row == 0 else [2]) + [VIDEO] * video_count + TEXTS[row]
                 for row in rows]
    length = max(len(s) for s in sequences)
    batch = {
        "input_ids": torch.tensor([[1] * (length - len(s)) + s for s in sequences]),
        "attention_mask": torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences]),
        "pixel_values_videos": torch.cat([pixels(10 + row, (1, FRAMES)) for row in rows]),
    }
    if 0 in rows:
        batch.update(pixel_values=pixels(0, (1, 3)), image_sizes=torch.tensor([IMAGE_SIZE]))
    return batch


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_keeping_every_token_with_videos_is_the_stock_model(weights, name):
    model = stock_model(weights, name)
    batch = batch_inputs(model)
    stock_logits, stock_ids = logits(model, batch), generate(model, batch)[0]
    apply_turbo(model, llm_layers=[1], llm_keep=[10_000])
    real = batch["attention_mask"].bool()
    assert torch.equal(logits(model, batch)[real], stock_logits[real])
    assert torch.equal(generate(model, batch)[0], stock_ids)
    apply_turbo(model, llm_layers=[1], llm_keep=[0.5])
    assert not torch.allclose(logits(model, batch)[:, -1], stock_logits[:, -1], atol=1e-4)
    remove_turbo(model)
    assert torch.equal(logits(model, batch), stock_logits)


SETTINGS = {
    "llava_next_video": {"video_keep": 0.5, "llm_layers": [1], "llm_keep": [0.5]},  # both reductions
    "llava_onevision": {"llm_layers": [1], "llm_keep": [9]},
}


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_left_padded_batch_with_videos_is_each_row_alone_and_static_is_dynamic(weights, name):
    check_rows_alone_and_static(apply_turbo(stock_model(weights, name), **SETTINGS[name]), batch_inputs)


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_each_video_keeps_its_share_of_all_its_frames(weights, name):
    model = apply_turbo(stock_model(weights, name), llm_layers=[1], llm_keep=[0.3])
    image_count, video_count = counts(model)
    for rows, removed in (((1,), video_count - keep_count(0.3, video_count)),
                          ((0,), image_count + video_count - keep_count(0.3, image_count)
                           - keep_count(0.3, video_count))):
        batch = batch_inputs(model, rows)
        with torch.no_grad():
            cache = cache_of(model(**batch))
        length = batch["input_ids"].shape[1]
        assert [layer.keys.shape[2] for layer in cache.layers] == [length, length - removed]


def test_eager_equals_sdpa_with_videos(weights):
    results = []
    for attn in ("eager", "sdpa"):
        model = apply_turbo(stock_model(weights, "llava_next_video", attn), r=8, **SETTINGS["llava_next_video"])
        results.append(generate(model, batch_inputs(model)))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


def bias_reference(stock, ids, features, sizes):
    """Greedy ids and step logits of the stock language model fed `features` at the video tokens, without a cache,
    with `log(sizes)` added to their key columns (`sizes=None`: no bias)."""
    embed, language_model = stock.get_input_embeddings(), stock.model.language_model
    ids, steps = ids.clone(), []
    with torch.no_grad():
        for _ in range(NEW):
            embeds = embed(ids)
            video = ids == VIDEO
            embeds[video] = features.reshape(-1, features.shape[-1])
            length = ids.shape[1]
            bias = torch.zeros(1, length)
            if sizes is not None:
                bias[video] = sizes.reshape(-1).log()
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            mask = torch.where(causal, bias[:, None, :], torch.finfo(torch.float32).min)[:, None]
            hidden = language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            step = stock.lm_head(hidden[:, -1])
            steps.append(step)
            ids = torch.cat([ids, step.argmax(-1, keepdim=True)], dim=1)
    return ids[:, -NEW:], torch.stack(steps)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_merged_video_tokens_get_their_log_size_bias_in_every_layer_prefill_and_decoding(weights, attn):
    model = stock_model(weights, "llava_next_video", attn)
    runs = {}
    for proportional in (True, False):
        apply_turbo(model, video_keep=0.25, r=8, proportional_attention=proportional)
        batch = batch_inputs(model, rows=(1,))
        with torch.no_grad():
            video = model.model.get_video_features(batch["pixel_values_videos"])
        runs[proportional] = (generate(model, batch), video.pooler_output, video.deepstack_features[0][0])
    sizes = runs[True][2]
    assert sizes.sum() == FRAMES * 16 and sizes.max() > 1  # 64 stock tokens merged into 16
    remove_turbo(model)
    for proportional, ((ids, step_logits), features, sizes) in runs.items():
        reference_ids, reference_logits = bias_reference(model, batch["input_ids"], features,
                                                         sizes if proportional else None)
        assert torch.equal(ids, reference_ids)
        torch.testing.assert_close(step_logits, reference_logits, atol=1e-5, rtol=1e-5)
    # the bias changes the result: the same features without it give other logits
    unbiased = bias_reference(model, batch["input_ids"], runs[True][1], None)[1]
    assert not torch.allclose(unbiased, runs[True][0][1], atol=1e-3)
