"""What is specific to LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video under Turbo (the shared checks are in
test_families.py): the anyres packing on the full grid (shapes, `image_newline`), the stock processor's count equal
to the model's, greedy `generate()` at r=0 and in a left-padded batch, feature-layer lists, the joint merge of a
video's frames and its count, and the settings refused by name."""

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTModel,
)

from turbo_hf import TurboConfig, apply_turbo, remove_turbo
from turbo_hf.modeling.modeling_turbo_llava_next_video import stock_video_tokens
from turbo_hf.modeling.processing_turbo_llava_next_video import TurboLlavaNextVideoProcessor
from turbo_hf.modeling.video_token_merging import merge_video_tokens, video_token_count
from turbo_hf.testing import tiny_models

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE, VIDEO = tiny_models.LLAVA_IMAGE_TOKEN, tiny_models.LLAVA_VIDEO_TOKEN
SIZES = [(40, 70), (64, 30), (32, 32)]  # three crops + base, two + base (unpadded), base only


def build(factory, attn="sdpa", **kw):
    torch.manual_seed(0)
    config = tiny_models.set_attention(factory(**kw), attn)
    cls = {"llava_next": LlavaNextForConditionalGeneration, "llava_onevision": LlavaOnevisionForConditionalGeneration,
           "llava_next_video": LlavaNextVideoForConditionalGeneration}[config.model_type]
    return cls(config).eval()


def tokenizer():
    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "<video>"] + [f"w{i}" for i in range(20)]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", padding_side="left",
                                   extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})


def next_processor(config) -> LlavaNextProcessor:
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=config.image_grid_pinpoints)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=4,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


def pictures(sizes):
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in sizes]


def features(model, inputs):
    with torch.no_grad():
        return model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output


@pytest.fixture(scope="module")
def next_inputs():
    config = tiny_models.llava_next_config()
    prompts = ["<s> <image> w1 w2", "<s> w3 <image> w4 w5 w6 w7", "<s> <image> w8"]
    return next_processor(config)(images=pictures(SIZES), text=prompts, return_tensors="pt", padding=True)


def test_the_stock_processor_count_is_the_model_count_while_merging(next_inputs):
    model = apply_turbo(build(tiny_models.llava_next_config), r=8)
    merged = features(model, next_inputs)
    counts = (next_inputs["input_ids"] == IMAGE).sum(1).tolist()
    assert [f.shape[0] for f in merged] == counts and len(set(counts)) == 3  # three anyres layouts
    stock = features(remove_turbo(model), next_inputs)
    assert all(a.shape == b.shape for a, b in zip(merged, stock))
    assert not all(torch.equal(a, b) for a, b in zip(merged, stock))
    # `image_newline` ends every grid row in both: same positions, same vector
    newline = model.model.image_newline
    for a, b in zip(merged, stock):
        rows = (b == newline).all(-1)
        assert rows.sum() > 0 and torch.equal((a == newline).all(-1), rows)


def test_a_count_that_differs_names_both(next_inputs):
    model = apply_turbo(build(tiny_models.llava_next_config), r=8)
    ids = next_inputs["input_ids"].clone()
    ids[0, (ids[0] == IMAGE).nonzero()[0]] = 7  # one placeholder fewer
    with pytest.raises(ValueError, match=r"holds \d+ image tokens but the model gives \d+ image features.*stock "
                                         r"processor"):
        model(**{**next_inputs, "input_ids": ids})


def generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)


def test_greedy_generate_at_r0_is_stock_and_a_padded_batch_is_each_row_alone(next_inputs):
    model = build(tiny_models.llava_next_config)
    stock = generate(model, next_inputs)
    assert torch.equal(generate(apply_turbo(model, r=0), next_inputs), stock)
    apply_turbo(model, r=8)
    batched = generate(model, next_inputs)
    for row in range(3):
        one = {k: v[row : row + 1] for k, v in next_inputs.items()}
        real = int(one["attention_mask"].sum())
        one = {k: v[:, -real:] if k in ("input_ids", "attention_mask") else v for k, v in one.items()}
        assert torch.equal(generate(model, one)[0, -real - 4 :], batched[row, -real - 4 :])


def test_a_feature_layer_list_merges_and_keeps_the_count(next_inputs):
    model = build(tiny_models.llava_next_config, vision_feature_layer=[-2, -3])
    stock = features(model, next_inputs)
    merged = features(apply_turbo(model, r=8), next_inputs)
    assert [f.shape for f in merged] == [f.shape for f in stock] and not torch.equal(merged[0], stock[0])


def test_every_hidden_state_the_tower_returns_is_on_the_full_grid():
    model = build(tiny_models.llava_next_config)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = model.model.vision_tower(pixels, output_hidden_states=True)
        at_zero = apply_turbo(model, r=0).model.vision_tower(pixels, output_hidden_states=True)
        merged = apply_turbo(model, r=8).model.vision_tower(pixels, output_hidden_states=True, return_dict=False)
    assert all(torch.equal(a, b) for a, b in zip(at_zero.hidden_states, stock.hidden_states))
    assert torch.equal(at_zero.pooler_output, stock.pooler_output)
    states = merged[2]
    assert len(states) == len(stock.hidden_states) and all(s.shape == t.shape for s, t in zip(states, stock.hidden_states))
    assert torch.equal(states[0], stock.hidden_states[0]) and not torch.equal(states[-1], stock.hidden_states[-1])


def test_onevision_video_frames_merge_in_the_tower_with_the_stock_count():
    model = build(tiny_models.llava_onevision_config)
    videos = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = model.model.get_video_features(videos).pooler_output
        merged = apply_turbo(model, r=8).model.get_video_features(videos).pooler_output
    assert merged.shape == stock.shape and not torch.equal(merged, stock)


def test_identical_frames_merge_across_time_and_keep_their_order():
    frame = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))
    video = frame.repeat(1, 4, 1)  # four identical frames
    merged, sizes = merge_video_tokens(video, 4, 16, TurboConfig(mode="tome"))
    assert torch.equal(sizes, torch.full((1, 16, 1), 4.0))  # each patch merged over the four frames
    torch.testing.assert_close(merged, frame)
    moving = torch.randn(2, 4 * 16, 8, generator=torch.Generator().manual_seed(1))
    kept, sizes = merge_video_tokens(moving, 4, 20, TurboConfig())
    assert kept.shape == (2, 20, 8) and torch.equal(sizes.sum((1, 2)), torch.full((2,), 64.0))


def test_the_video_count_is_the_processor_count_and_a_wrong_one_names_both():
    model = apply_turbo(build(tiny_models.llava_next_video_config), r=8, video_keep=0.3)
    count = model.model.num_video_tokens(4)
    assert count == video_token_count(stock_video_tokens(model.config, 4), 0.3) == round(0.3 * 64)
    processor = object.__new__(TurboLlavaNextVideoProcessor)  # the video processor needs torchvision: count only
    processor.video_token, processor.patch_size = "<video>", 4
    processor.sync_with(model)
    expanded = processor.replace_video_token({"pixel_values_videos": [np.zeros((4, 3, 32, 32))]}, 0)
    assert expanded == "<video>" * count
    assert {"video_keep": 0.3, "patch_size": 4}.items() <= processor.to_dict().items()  # what `save_pretrained` keeps
    with pytest.raises(ValueError, match="needs a \\(Turbo\\) LLaVA-NeXT-Video model or config, got a LlavaNextConfig"):
        processor.sync_with(tiny_models.llava_next_config())
    videos = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert model.model.get_video_features(videos).pooler_output.shape[1] == count
        assert model.model.get_video_features(videos, return_dict=False)[1].shape[1] == count  # pooler_output
        with pytest.raises(ValueError, match=rf"holds 64 video tokens but the model gives {count} video features.*"
                                             "TurboLlavaNextVideoProcessor"):
            model(input_ids=torch.tensor([[2] + [VIDEO] * 64]), pixel_values_videos=videos)


@pytest.mark.parametrize("factory", [tiny_models.llava_next_config, tiny_models.llava_onevision_config,
                                     tiny_models.llava_next_video_config], ids=lambda f: f.__name__)
def test_refused_settings_are_named_at_apply_turbo(factory):
    model = build(factory)
    if factory is tiny_models.llava_next_video_config:  # NeXT, OneVision: test_llava_next_llm_reduction.py
        with pytest.raises(ValueError, match=r"`llm_layers=\[2\]` names decoder layer\(s\) \[2\].*has 2 decoder"):
            apply_turbo(model, r=4, video_keep=0.5, llm_layers=2, llm_keep=8)
        assert type(model) is LlavaNextVideoForConditionalGeneration  # nothing swapped
    else:
        with pytest.raises(ValueError, match="`video_keep` merges a video's tokens.*LlavaNextVideo"):
            apply_turbo(model, r=4, video_keep=0.5)
    with pytest.raises(ValueError, match="`video_keep` must be an integer >= 1"):
        TurboConfig(video_keep=1.5)
    apply_turbo(model, r=4)
    with pytest.raises(ValueError, match="`output_attentions` is not supported by the Turbo"):
        model.model.vision_tower(torch.randn(1, 3, 32, 32), output_attentions=True)


def test_other_towers_and_families_are_refused():
    siglip_next = tiny_models.llava_next_config()
    siglip_next.vision_config = tiny_models.llava_onevision_config().vision_config
    with pytest.raises(ValueError, match="supports CLIPVisionModel vision towers; this model's tower is Siglip"):
        apply_turbo(LlavaNextForConditionalGeneration(siglip_next), r=4)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8))
    with pytest.raises(ValueError, match="`video_keep` merges a video's tokens"):
        apply_turbo(vit, r=2, video_keep=4)
