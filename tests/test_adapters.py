"""Every family adapter on tiny random models: exactness at r=0, schedules, batching, attention backends."""

import pytest
import torch

from tiny_models import FAMILIES, IMAGE_SIZE, LAYERS, PATCH, build, inputs, main_output
from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo, turbo_plan, unmerge

NAMES = list(FAMILIES)
VISION_NAMES = ["vit", "dinov2", "clip-vision", "siglip-vision"]


def run(model, name, batch=2, **kw):
    with torch.no_grad():
        return model(**inputs(name, batch=batch), **kw)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", NAMES)
def test_r0_is_the_stock_model_and_remove_restores_it(name, attn):
    model = build(name, attn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = main_output(name, run(model, name))

    apply_turbo(model, TurboConfig(r=0))
    assert torch.equal(main_output(name, run(model, name)), reference)
    apply_turbo(model, TurboConfig(r=6))
    assert not torch.equal(main_output(name, run(model, name)), reference)
    assert list(model.state_dict()) == list(state)
    remove_turbo(model)

    assert torch.equal(main_output(name, run(model, name)), reference)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(type(m).__name__.startswith("Turbo") for m in model.modules())


@pytest.mark.parametrize("name", VISION_NAMES)
def test_token_counts_follow_the_schedule_and_sizes_add_up(name):
    model = build(name)
    protect = FAMILIES[name][2]
    tokens = (IMAGE_SIZE // PATCH) ** 2 + int(protect)
    apply_turbo(model, TurboConfig(r=[6, 0, 9, 3]))
    out = run(model, name, batch=3, output_hidden_states=True)
    counts = turbo_plan(model)["token_counts"]
    assert counts == [tokens, tokens - 6, tokens - 6, tokens - 15, tokens - 18]
    assert [h.shape[1] for h in out.hidden_states] == counts
    assert out.last_hidden_state.shape[1] == counts[-1]
    assert torch.all(out.token_sizes.sum(dim=1) == tokens)
    restored = unmerge(out.last_hidden_state, out.token_source)
    assert restored.shape[1] == tokens
    # every input token is held by a token whose size counts it
    for row in range(3):
        held = torch.bincount(out.token_source[row], minlength=counts[-1]).float()
        assert torch.equal(held, out.token_sizes[row, :, 0])
    if protect:
        assert torch.all(out.token_source[:, 0] == 0) and torch.all(out.token_sizes[:, 0] == 1)


def per_sample_output(name, model, pixel_values):
    """What the model gives one image, as (B, D), for every family."""
    if name in ("clip", "siglip"):
        return model.get_image_features(pixel_values=pixel_values).pooler_output
    out = model(pixel_values=pixel_values)
    if name.endswith("-cls"):
        return out.logits
    if name == "clip-vision-proj":
        return out.image_embeds
    return out.last_hidden_state.flatten(1)


@pytest.mark.parametrize("mode", ["turbo", "tome", "semantic"])
@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_by_one(name, mode):
    model = apply_turbo(build(name), TurboConfig(r=7, mode=mode))
    pixel_values = inputs(name, batch=3)["pixel_values"]
    with torch.no_grad():
        batched = per_sample_output(name, model, pixel_values)
        singles = torch.cat([per_sample_output(name, model, x[None]) for x in pixel_values])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_eager_and_sdpa_agree_while_merging(name):
    outputs = []
    for attn in ("eager", "sdpa"):
        model = apply_turbo(build(name, attn), TurboConfig(r=[8, 8, 4, 4]))
        outputs.append(main_output(name, run(model, name)))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


def test_seeded_random_mode_is_reproducible():
    model = build("dinov2")
    first = run(apply_turbo(model, mode="random", r=8, seed=3), "dinov2")
    again = run(model, "dinov2")
    other = run(apply_turbo(model, mode="random", r=8, seed=4), "dinov2")
    assert torch.equal(first.token_source, again.token_source)
    assert torch.equal(first.last_hidden_state, again.last_hidden_state)
    assert not torch.equal(first.token_source, other.token_source)


@pytest.mark.parametrize("name", ["vit-cls", "dinov2-cls", "clip-cls", "siglip-cls"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    grads = []
    for checkpointing in (False, True):
        model = apply_turbo(build(name), TurboConfig(r=[8, 4, 4, 4]))
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(**inputs(name), labels=torch.tensor([0, 1])).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", VISION_NAMES)
def test_bfloat16_runs_and_tracks_float32(name):
    # small r: bf16 rounding may still flip a near-tie between merge partners
    model = apply_turbo(build(name), TurboConfig(r=2))
    reference = run(model, name)
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(pixel_values=inputs(name)["pixel_values"].to(torch.bfloat16))
    assert out.last_hidden_state.dtype == torch.bfloat16
    assert out.last_hidden_state.shape == reference.last_hidden_state.shape
    # bf16 may merge other tokens: compare on the restored token grid
    restored = unmerge(out.last_hidden_state, out.token_source).float().flatten(1)
    expected = unmerge(reference.last_hidden_state, reference.token_source).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(restored, expected)
    assert torch.all(torch.isfinite(restored)) and torch.all(cosine > 0.95)


@pytest.mark.parametrize("name", ["vit", "dinov2", "clip-vision", "siglip-vision"])
def test_other_resolutions_resolve_their_own_schedule(name):
    model = apply_turbo(build(name), TurboConfig(flops_ratio=0.6))
    kwargs = {} if name == "dinov2" else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        out = model(pixel_values=inputs(name, image_size=48)["pixel_values"], **kwargs)
    tokens = (48 // PATCH) ** 2 + int(FAMILIES[name][2])
    plan = turbo_plan(model, tokens)
    assert plan["flops_fraction"] <= 0.6
    assert out.last_hidden_state.shape[1] == plan["token_counts"][-1] < tokens


def test_restore_output_gives_one_token_per_patch():
    model = apply_turbo(build("dinov2"), TurboConfig(r=8, restore_output=True))
    out = run(model, "dinov2")
    assert out.last_hidden_state.shape[1] == (IMAGE_SIZE // PATCH) ** 2 + 1
    assert torch.all(out.token_sizes == 1)


def test_output_attentions_shrink_with_the_tokens():
    model = apply_turbo(build("vit", "eager"), TurboConfig(r=5))
    out = run(model, "vit", output_attentions=True)
    assert [a.shape[-1] for a in out.attentions] == turbo_plan(model)["token_counts"][:LAYERS]


def test_clip_text_tower_is_untouched():
    model = build("clip")
    text = inputs("clip")["input_ids"]
    with torch.no_grad():
        before = model.get_text_features(input_ids=text).pooler_output
        apply_turbo(model, r=8)
        after = model.get_text_features(input_ids=text).pooler_output
    assert torch.equal(before, after)
    assert not any(type(m).__name__.startswith("Turbo") for m in model.text_model.modules())
    assert type(model.vision_model.encoder.layers[0]).__name__ == "TurboCLIPEncoderLayer"


def test_siglip_merges_without_protecting_a_token():
    model = apply_turbo(build("siglip-vision"), TurboConfig(r=[32, 8, 4, 2], mode="tome"))
    out = run(model, "siglip-vision", batch=4)
    # with no [CLS], every even token is a candidate: 32 of 64 can go in one step, token 0 among them
    assert turbo_plan(model)["schedule"] == [32, 8, 4, 2]
    holder_size = out.token_sizes[:, :, 0].gather(1, out.token_source[:, :1])
    assert torch.all(holder_size > 1)
    assert out.pooler_output.shape == (4, 32)
    protected = apply_turbo(build("clip-vision"), TurboConfig(r=[32, 8, 4, 2], mode="tome"))
    assert turbo_plan(protected)["schedule"][0] == 32 and turbo_plan(protected, 64 + 1)["token_counts"][1] == 33


def test_context_manager_restores_on_error():
    model = build("vit")
    with pytest.raises(RuntimeError, match="boom"):
        with turbo(model, r=4):
            assert type(model).__name__ == "TurboViTModel"
            raise RuntimeError("boom")
    assert type(model).__name__ == "ViTModel"
