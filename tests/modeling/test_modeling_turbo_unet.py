"""Turbo for Stable Diffusion (diffusers' UNet2DConditionModel): stock at ratio 0 and after `remove_turbo`, weights
untouched, rows independent of their batch (classifier-free guidance), seeded runs reproducible, the attention
processors kept, the text's attention used, bad settings refused early. Tiny random UNet and pipeline."""

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from turbo_hf import TurboConfig, apply_turbo, get_turbo_config, is_turbo_applied, remove_turbo, turbo, turbo_plan
from turbo_hf.modeling.modeling_turbo_unet import TurboBasicTransformerBlock, TurboUNet2DConditionModel, text_attention
from turbo_hf.testing.tiny_diffusion import tiny_pipeline, tiny_unet, unet_inputs
from turbo_hf.testing.tiny_models import build

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = ["self_attn", "cross_attn", "ff"]
PROMPTS = ["a photo of a cat", "a red dog on the grass"]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _sample(unet, **inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def _images(pipe, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS, num_inference_steps=2, guidance_scale=7.5, generator=generator, output_type="pt", **kwargs).images


def test_ratio_zero_and_remove_turbo_are_the_stock_unet(unet):
    inputs = unet_inputs()
    stock = _sample(unet, **inputs)
    weights = {name: value.clone() for name, value in unet.state_dict().items()}
    apply_turbo(unet, merge_ratio=0.0, merge_components=ALL, max_downsample=8)
    assert type(unet) is TurboUNet2DConditionModel and torch.equal(_sample(unet, **inputs), stock)
    apply_turbo(unet, merge_ratio=0.5, merge_components=ALL)
    assert not torch.allclose(_sample(unet, **inputs), stock, atol=1e-3)
    assert unet.state_dict().keys() == weights.keys()
    assert all(torch.equal(value, weights[name]) for name, value in unet.state_dict().items())
    remove_turbo(unet)
    assert type(unet).__name__ == "UNet2DConditionModel" and "turbo_runtime" not in unet.__dict__
    assert not any(isinstance(module, TurboBasicTransformerBlock) for module in unet.modules())
    assert torch.equal(_sample(unet, **inputs), stock)


def test_the_pipeline_is_patched_through_its_unet_and_restored_bit_for_bit(pipe):
    stock = _images(pipe)
    assert apply_turbo(pipe, merge_ratio=0.0) is pipe and is_turbo_applied(pipe) and is_turbo_applied(pipe.unet)
    assert torch.equal(_images(pipe), stock)
    remove_turbo(pipe)
    with turbo(pipe, merge_ratio=0.5, merge_components=ALL) as patched:
        assert patched is pipe and get_turbo_config(pipe).merge_ratio == 0.5
        merged = _images(pipe)
    assert not is_turbo_applied(pipe) and torch.equal(_images(pipe), stock)
    assert merged.shape == stock.shape and not torch.equal(merged, stock)


@pytest.mark.parametrize("settings", [
    {"mode": "turbo", "alpha": 1.0, "merge_components": ALL},
    {"mode": "tome", "reduction": "prune"},
    {"mode": "random", "random_cell": True, "seed": 3, "max_downsample": 2},
], ids=["turbo", "tome-prune", "random-cells"])
def test_each_row_merges_as_it_would_alone(unet, settings):
    """A classifier-free-guidance batch (one unconditional and one conditional row, different text) gives each row
    what it gives alone: every row has its own plan, and random draws depend on the row's seed and timestep."""
    inputs = unet_inputs(batch=3, seed=1)
    inputs["encoder_hidden_states"][0] = 0.0  # an "unconditional" row
    with turbo(unet, merge_ratio=0.6, **settings):
        batched = _sample(unet, **inputs)
        alone = torch.cat([_sample(unet, sample=inputs["sample"][i:i + 1], timestep=inputs["timestep"],
                                   encoder_hidden_states=inputs["encoder_hidden_states"][i:i + 1]) for i in range(3)])
        assert torch.allclose(batched, alone, atol=1e-5, rtol=1e-5)
        steps = torch.tensor([500, 500, 10])
        per_row = _sample(unet, sample=inputs["sample"], timestep=steps, encoder_hidden_states=inputs["encoder_hidden_states"])
        last = _sample(unet, sample=inputs["sample"][2:], timestep=steps[2:], encoder_hidden_states=inputs["encoder_hidden_states"][2:])
        assert torch.allclose(per_row[2:], last, atol=1e-5, rtol=1e-5)


def test_a_seeded_random_run_is_reproducible_and_the_seed_matters(pipe):
    settings = {"merge_ratio": 0.5, "mode": "random", "random_cell": True, "merge_components": ALL}
    with turbo(pipe, seed=1, **settings):
        first, again = _images(pipe), _images(pipe)
    with turbo(pipe, seed=2, **settings):
        other = _images(pipe)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_the_text_attention_decides_in_turbo_mode(unet):
    inputs = unet_inputs(seed=2)
    with turbo(unet, merge_ratio=0.5, mode="tome", merge_components=ALL):
        tome = _sample(unet, **inputs)
    with turbo(unet, merge_ratio=0.5, mode="turbo", alpha=0.0, merge_components=ALL):
        assert torch.equal(_sample(unet, **inputs), tome)  # alpha = 0 is redundancy alone
    with turbo(unet, merge_ratio=0.5, mode="turbo", alpha=5.0, merge_components=ALL):
        assert not torch.allclose(_sample(unet, **inputs), tome, atol=1e-4)
    attention = next(m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock").attn2
    image, text = torch.randn(2, 64, attention.to_q.in_features), inputs["encoder_hidden_states"]
    share = text_attention(attention, image, text)
    assert share.shape == (2, 64) and torch.allclose(share.sum(-1), torch.ones(2), atol=1e-5)
    doubled = text_attention(attention, image[:, :32], text, torch.full((2, 32, 1), 2.0))
    halves = text_attention(attention, image[:, :32].repeat_interleave(2, 1), text)
    assert torch.allclose(doubled, halves.view(2, 32, 2).sum(-1), atol=1e-5)  # log(size) counts a token twice


class _CountingProcessor(AttnProcessor2_0):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.seen.append(hidden_states.shape[1])
        return super().__call__(attn, hidden_states, *args, **kwargs)


def test_the_attention_processors_are_kept_and_see_the_merged_tokens():
    unet, inputs = tiny_unet(), unet_inputs()
    processors = unet.attn_processors
    assert {type(p) for p in processors.values()} == {AttnProcessor2_0}
    with turbo(unet, merge_ratio=0.5, merge_components=ALL, max_downsample=2):
        assert unet.attn_processors == processors
        sdpa = _sample(unet, **inputs)
        unet.set_attn_processor(AttnProcessor())
        assert torch.allclose(_sample(unet, **inputs), sdpa, atol=1e-5)
        seen = []
        unet.set_attn_processor(_CountingProcessor(seen))
        _sample(unet, **inputs)
    # 16 x 16 latents: full-resolution blocks merge 256 -> 128 tokens, the 8 x 8 mid block 64 -> 32
    assert sorted(set(seen)) == [32, 128]
    seen.clear()
    with turbo(unet, merge_ratio=0.5):  # tomesd's defaults: self-attention at full resolution only
        _sample(unet, **inputs)
    assert sorted(set(seen)) == [64, 128, 256]


def test_plan_copy_and_saved_config(unet):
    with turbo(unet, merge_ratio=0.5, max_downsample=2):
        plan = turbo_plan(unet)
        assert plan["levels"] == [{"downsample": 1, "tokens": 256, "merged": 128, "blocks": 3},
                                  {"downsample": 2, "tokens": 64, "merged": 32, "blocks": 1}]
        twin = copy.deepcopy(unet)
        assert torch.equal(_sample(twin, **unet_inputs()), _sample(unet, **unet_inputs()))
        assert '"_class_name": "UNet2DConditionModel"' in unet.to_json_string()


@pytest.mark.parametrize("settings, message", [
    ({"merge_ratio": 0.8}, r"`merge_ratio` must be a number in \[0, 0.75\]"),
    ({"merge_ratio": 0.6, "merge_stride": [2, 1]}, r"`merge_ratio` must be a number in \[0, 0.5\]"),
    ({"merge_ratio": -0.1}, "`merge_ratio` must be"),
    ({"merge_components": ["attn"]}, r"`merge_components` must be a non-empty list of distinct entries of \['self_attn'"),
    ({"merge_components": []}, "`merge_components` must be"),
    ({"max_downsample": 3}, r"`max_downsample` must be one of \[1, 2, 4, 8\]"),
    ({"merge_stride": [1, 1]}, r"`merge_stride` must be \[sx, sy\]"),
    ({"merge_stride": [2]}, r"`merge_stride` must be \[sx, sy\]"),
    ({"random_cell": "yes"}, "`random_cell` must be True, False or None"),
])
def test_bad_unet_settings_are_refused_at_creation(settings, message):
    with pytest.raises(ValueError, match=message):
        TurboConfig(**settings)


@pytest.mark.parametrize("settings, message", [
    ({"r": 4}, "`r` does not apply to UNet2DConditionModel .* Use `merge_ratio`"),
    ({"min_tokens": 8}, "`min_tokens` does not apply to UNet2DConditionModel"),
    ({"llm_layers": [1], "llm_keep": [4]}, "`llm_layers` does not apply"),
    ({"text_r": 2}, "`text_r` configures the ITM text encoder"),
])
def test_transformer_settings_are_refused_by_the_unet(unet, settings, message):
    with pytest.raises(ValueError, match=message):
        apply_turbo(unet, **settings)
    assert type(unet).__name__ == "UNet2DConditionModel"


def test_unet_settings_are_refused_by_the_other_families():
    model = build("vit-cls")
    for name, value in [("merge_ratio", 0.5), ("merge_components", ["ff"]), ("random_cell", False)]:
        with pytest.raises(ValueError, match=f"`{name}` configures Stable Diffusion's UNet .*; "
                                             "ViTForImageClassification does not take it"):
            apply_turbo(model, **{name: value})
    assert not is_turbo_applied(model)


# diffusers methods our code follows or wraps, by the reviewed diffusers release (setup.cfg allows that minor only)
REVIEWED_DIFFUSERS = {
    "diffusers.models.attention.BasicTransformerBlock.forward": {"0.42.1": "fe4764e16c58d35d"},
    "diffusers.configuration_utils.ConfigMixin.to_json_string": {"0.42.1": "7e88d107ebc27a94"},
}


@pytest.mark.parametrize("name", list(REVIEWED_DIFFUSERS))
def test_the_diffusers_methods_we_follow_are_the_reviewed_ones(name):
    """TurboBasicTransformerBlock.forward re-runs the stock block's steps, and the UNet's `to_json_string` wraps
    the stock one: a diffusers release that changes them must be reviewed (then add its fingerprint here)."""
    from turbo_hf.testing.upstream import fingerprint, resolve

    assert fingerprint(resolve(name)) in REVIEWED_DIFFUSERS[name].values(), f"{name} changed: re-check our override"
