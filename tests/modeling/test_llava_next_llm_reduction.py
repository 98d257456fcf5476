"""LLaVA-NeXT (Llama) and LLaVA-OneVision (Qwen2): image tokens reduced inside the language model (`llm_layers`,
`llm_keep`) on tiny random models fed `input_ids` + `pixel_values` + `image_sizes` directly (no processor).

An image's tokens are its packed features (base crop, unpadded anyres tiles, `image_newline` tokens), so two images
of different sizes have different token counts and `llm_keep` applies to each image's own count.
"""

import pytest
import torch
from transformers import (
    LlavaNextForConditionalGeneration, LlavaNextVideoForConditionalGeneration, LlavaOnevisionForConditionalGeneration,
)

from turbo_hf import apply_turbo, remove_turbo
from turbo_hf.modeling.compat import cache_of
from turbo_hf.modeling.llm_token_reduction import keep_count
from turbo_hf.modeling.modeling_turbo_llava_next import TurboLlavaNextConfig, TurboLlavaNextForConditionalGeneration
from turbo_hf.testing import tiny_models

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {
    "llava_next": (tiny_models.llava_next_config, LlavaNextForConditionalGeneration),
    "llava_onevision": (tiny_models.llava_onevision_config, LlavaOnevisionForConditionalGeneration),
    "llava_next_video": (tiny_models.llava_next_video_config, LlavaNextVideoForConditionalGeneration),  # videos:
}  # test_llava_video_llm_reduction.py
IMAGE_FAMILIES = ["llava_next", "llava_onevision"]
SIZES = [(32, 64), (64, 64)]  # 2 tiles + base, 4 tiles + base: two anyres layouts, two token counts
TEXTS = [[7, 8, 9, 10, 11, 12], [13, 14]]
NEW = 4
SETTINGS = {"llm_layers": [1], "llm_keep": [0.5]}


@pytest.fixture(scope="module", params=IMAGE_FAMILIES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def weights():
    result = {}
    for family, (make, stock_class) in FAMILIES.items():
        torch.manual_seed(0)
        result[family] = tiny_models.large_weights(stock_class(make())).state_dict()
    return result


def stock_model(weights, name, attn="sdpa"):
    make, stock_class = FAMILIES[name]
    model = stock_class(tiny_models.set_attention(make(), attn))
    model.load_state_dict(weights[name])
    return model.eval()


def crops(size) -> int:
    return 1 + (size[0] // tiny_models.IMAGE_SIZE) * (size[1] // tiny_models.IMAGE_SIZE)


def image_counts(model) -> list[int]:
    """Each image's packed token count, as the stock model gives it (newline tokens included)."""
    pixels, sizes = pixel_inputs()
    with torch.no_grad():
        return [f.shape[0] for f in model.model.get_image_features(pixels, sizes).pooler_output]


def pixel_inputs():
    generator = torch.Generator().manual_seed(1)
    most = max(crops(size) for size in SIZES)
    pixels = torch.randn(len(SIZES), most, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, generator=generator)
    return pixels, torch.tensor(SIZES)


def batch_inputs(model, rows=(0, 1)):
    """A left-padded batch of `rows` (one image each, then text)."""
    counts = image_counts(model)
    pixels, sizes = pixel_inputs()
    sequences = [[2] + [tiny_models.LLAVA_IMAGE_TOKEN] * counts[row] + TEXTS[row] for row in rows]
    length = max(len(s) for s in sequences)
    ids = torch.tensor([[1] * (length - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences])
    most = max(crops(SIZES[row]) for row in rows)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels[list(rows), :most],
            "image_sizes": sizes[list(rows)]}


def generate(model, batch, **kw):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kw)
    return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_keeping_every_token_is_the_stock_model_and_remove_turbo_restores_it(weights, name):
    model = stock_model(weights, name)
    batch = batch_inputs(model)
    stock_logits, stock_ids = logits(model, batch), generate(model, batch)
    alone = batch_inputs(model, rows=(1,))
    stock_alone = logits(model, alone)
    apply_turbo(model, llm_layers=[1], llm_keep=[10_000])  # an int above every image's count: nothing removed
    real = batch["attention_mask"].bool()  # (the padding rows' outputs are not compared: no query reads them)
    assert torch.equal(logits(model, batch)[real], stock_logits[real])
    assert torch.equal(logits(model, alone), stock_alone)
    assert torch.equal(generate(model, batch)[0], stock_ids[0])
    apply_turbo(model, **SETTINGS)
    assert not torch.allclose(logits(model, batch), stock_logits)
    remove_turbo(model)
    assert type(model) is FAMILIES[name][1]
    assert type(model.model.language_model).__name__ in ("LlamaModel", "Qwen2Model")
    assert torch.equal(logits(model, batch), stock_logits)
    assert all(torch.equal(value, weights[name][key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("settings", [SETTINGS, {"llm_layers": [1], "llm_keep": [9]}], ids=["share", "count"])
def test_left_padded_batch_with_two_anyres_layouts_is_each_row_alone_and_static_is_dynamic(weights, name, settings):
    model = apply_turbo(stock_model(weights, name), **settings)
    counts = image_counts(model)
    assert counts[0] != counts[1]
    check_rows_alone_and_static(model, batch_inputs)


def check_rows_alone_and_static(model, make_batch):
    """Each row of the batch `make_batch(model)` generates as `make_batch(model, rows=(row,))` alone, and a static
    cache as the dynamic one."""
    batch = make_batch(model)
    ids, step_logits = generate(model, batch)
    for row in range(batch["input_ids"].shape[0]):
        alone_ids, alone_logits = generate(model, make_batch(model, rows=(row,)))
        assert torch.equal(alone_ids, ids[row : row + 1])
        torch.testing.assert_close(alone_logits, step_logits[:, row : row + 1], atol=1e-5, rtol=1e-5)
    static_ids, static_logits = generate(model, batch, cache_implementation="static")
    assert torch.equal(static_ids, ids)
    torch.testing.assert_close(static_logits, step_logits, atol=1e-5, rtol=1e-5)


def test_eager_equals_sdpa_under_reduction(weights, name):
    batch = batch_inputs(stock_model(weights, name))
    results = [generate(apply_turbo(stock_model(weights, name, attn), r=8, **SETTINGS), batch)
               for attn in ("eager", "sdpa")]
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("keep", [0.5, 9])
def test_the_caches_after_the_reduction_are_shorter_by_the_removed_count(weights, name, keep):
    model = apply_turbo(stock_model(weights, name), llm_layers=[1], llm_keep=[keep])
    counts = image_counts(model)
    removed = [count - keep_count(keep, count) for count in counts]
    for rows in ((0,), (1,), (0, 1)):
        batch = batch_inputs(model, rows)
        with torch.no_grad():
            cache = cache_of(model(**batch))
        length = batch["input_ids"].shape[1]
        # the row that removes least sets the reduced length (the other one has dead slots)
        assert [layer.keys.shape[2] for layer in cache.layers] == [length, length - min(removed[r] for r in rows)]


def test_refused_settings_are_named_early(weights, name):
    model = stock_model(weights, name)
    with pytest.raises(ValueError, match=r"`llm_layers=\[2\]` names decoder layer\(s\) \[2\].*has 2 decoder layers"):
        apply_turbo(model, llm_layers=[2], llm_keep=[0.5])
    assert type(model) is FAMILIES[name][1]  # nothing swapped
    with pytest.raises(ValueError, match="names decoder layer"):
        TurboLlavaNextForConditionalGeneration(
            TurboLlavaNextConfig(**tiny_models.llava_next_config().to_dict(),
                                 turbo_config={"llm_layers": [3], "llm_keep": [4]}))
    if name == "llava_onevision":
        apply_turbo(model, **SETTINGS)
        frames = torch.zeros(1, 2, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE)
        with pytest.raises(ValueError, match=r"The text holds 1 video tokens but the model gives \d+ video features"):
            model(input_ids=torch.tensor([[2, tiny_models.LLAVA_VIDEO_TOKEN, 7]]), pixel_values_videos=frames)
