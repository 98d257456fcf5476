"""The vision families on tiny random models: schedules and token counts, bf16, resolutions, compile, ToMe's
token order. The checks every family owes (r=0, remove, batching, backends, Hub, refusals) are in test_families.py."""

import copy
import math

import pytest
import torch

from turbo_hf.testing.tiny_models import FAMILIES, IMAGE_SIZE, LAYERS, PATCH, build, inputs
from turbo_hf import TurboConfig, apply_turbo, turbo, turbo_plan, unmerge

VISION_NAMES = ["vit", "dinov2", "clip-vision", "siglip-vision"]


def run(model, name, batch=2, **kw):
    with torch.no_grad():
        return model(**inputs(name, batch=batch), **kw)


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


# ------------------------------------------------------------------------------------------ bf16 matching


@pytest.mark.parametrize("mode", ["tome", "turbo"])
def test_bfloat16_plans_follow_float32_matching_of_the_same_keys(mode, monkeypatch):
    """A bf16 model merges what float32 matching of its own (bf16) keys picks, computed here from scratch."""
    from turbo_hf.modeling.merging import bipartite_plan, semantic_value
    from turbo_hf.modeling.turbo_encoder import LayerStep

    model = apply_turbo(build("vit"), TurboConfig(r=16, mode=mode)).to(torch.bfloat16)
    seen = []
    original = LayerStep.plan

    def recording_plan(self, size, query, keys, scaling, bias, **constraints):
        plan = original(self, size, query, keys, scaling, bias, **constraints)
        seen.append((self, size, query, keys, scaling, bias, plan))
        return plan

    monkeypatch.setattr(LayerStep, "plan", recording_plan)
    with torch.no_grad():
        model(pixel_values=inputs("vit", batch=3)["pixel_values"].to(torch.bfloat16))
    assert len(seen) == LAYERS
    differs_in_bf16 = False
    for step, size, query, keys, scaling, bias, plan in seen:
        assert keys.dtype == torch.bfloat16
        mean = keys.float().mean(dim=1)
        metric = mean / mean.norm(dim=-1, keepdim=True)
        semantic = None
        if mode == "turbo":
            semantic = semantic_value(query[:, :, :1].float(), keys.float(), scaling, None if bias is None else bias.float())
        reference = bipartite_plan(metric, step.r, mode=mode, semantic=semantic, alpha=step.alpha)
        for name in ("src_idx", "dst_idx", "keep_idx", "new_index"):
            assert torch.equal(getattr(plan, name), getattr(reference, name)), (step.layer_idx, name)
        low = keys.mean(dim=1)
        low = low / low.norm(dim=-1, keepdim=True)
        rounded = bipartite_plan(low, step.r, mode="tome") if mode == "tome" else None
        if rounded is not None:
            for row in range(keys.shape[0]):
                pairs = set(zip(rounded.src_idx[row].tolist(), rounded.dst_idx[row].tolist()))
                differs_in_bf16 |= pairs != set(zip(reference.src_idx[row].tolist(), reference.dst_idx[row].tolist()))
    if mode == "tome":
        # the premise: matching on the bf16 metric (what was matched before) merges other tokens or partners
        assert differs_in_bf16


# --------------------------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
@pytest.mark.parametrize(("name", "backend"), [("vit", "aot_eager"), ("dinov2", "eager")])
def test_compile_fullgraph_one_graph_across_batch_sizes(name, backend):
    """r fixed: every shape is static but the batch, so one graph with no break serves every batch size."""
    from torch._dynamo.testing import CompileCounterWithBackend

    model_class, make_config, _ = FAMILIES[name]
    torch.manual_seed(0)
    config = make_config()
    config.num_hidden_layers = 2  # tracing time grows with the layers
    model = apply_turbo(model_class(config).eval(), TurboConfig(r=6))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    try:
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            for batch in (2, 5):
                pixel_values = inputs(name, batch=batch)["pixel_values"]
                torch._dynamo.mark_dynamic(pixel_values, 0)
                out = compiled(pixel_values=pixel_values)
                expected = model(pixel_values=pixel_values)
                assert out.last_hidden_state.shape == (batch, (IMAGE_SIZE // PATCH) ** 2 + 1 - 6 * 2, 32)
                assert torch.equal(out.token_source, expected.token_source)
                torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ ToMe token order


def _tome_step(x, size, metric, r, class_token=True, divide_all=False):
    """One ToMe step (Bolya et al., ICLR 2023) from its published algorithm, over the current token order."""
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[:, 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]  # ties: lower position first
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1).values

    def merge(t):
        t_a, t_b = t[:, ::2], t[:, 1::2]
        channels = t.shape[-1]
        unm = t_a.gather(1, unm_idx.expand(-1, -1, channels))
        src = t_a.gather(1, src_idx.expand(-1, -1, channels))
        dst = t_b.scatter_reduce(1, dst_idx.expand(-1, -1, channels), src, reduce="sum")
        return torch.cat([unm, dst], dim=1)

    total, new_size = merge(x * size), merge(size)
    if divide_all:  # ToMe's code divides every token; (x * s) / s may differ from x by one ulp
        return total / new_size, new_size
    touched = torch.cat([torch.zeros_like(unm_idx, dtype=torch.bool),
                         torch.zeros_like(b[..., :1], dtype=torch.bool).scatter(1, dst_idx, True)], dim=1)
    return torch.where(touched, total / new_size, merge_or_keep(x, unm_idx)), new_size


def merge_or_keep(x, unm_idx):
    """The tokens untouched by a ToMe step, in its output order (unmerged A, then B)."""
    return torch.cat([x[:, ::2].gather(1, unm_idx.expand(-1, -1, x.shape[-1])), x[:, 1::2]], dim=1)


def _tome_vit(vit, pixel_values, r, divide_all=False):
    """A stock ViTModel run with ToMe: proportional attention, merge after attention and before the MLP."""
    x = vit.embeddings(pixel_values)
    size = torch.ones_like(x[..., :1])
    batch, heads = x.shape[0], vit.config.num_attention_heads
    for layer in vit.layers:
        h = layer.layernorm_before(x)
        attention, _ = layer.attention(h, size.log()[:, None, None, :, 0])
        x = attention + x
        keys = layer.attention.k_proj(h).view(batch, x.shape[1], heads, -1).transpose(1, 2)
        metric = keys.mean(dim=1)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        x, size = _tome_step(x, size, metric, r, divide_all=divide_all)
        x = layer.mlp(layer.layernorm_after(x)) + x
    return vit.layernorm(x), size


def test_tome_order_reproduces_tome_bit_for_bit():
    stock = build("vit", "eager")
    model = apply_turbo(copy.deepcopy(stock), TurboConfig(r=6, mode="tome", token_order="tome"))
    pixel_values = inputs("vit", batch=3)["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
        expected, expected_size = _tome_vit(stock, pixel_values, 6)
        literal, _ = _tome_vit(stock, pixel_values, 6, divide_all=True)
        spatial = apply_turbo(copy.deepcopy(stock), TurboConfig(r=6, mode="tome"))(pixel_values=pixel_values)
    assert out.last_hidden_state.shape[1] == 65 - 6 * LAYERS
    assert torch.equal(out.last_hidden_state, expected)
    assert torch.equal(out.token_sizes, expected_size)
    torch.testing.assert_close(out.last_hidden_state, literal, atol=1e-5, rtol=1e-5)
    # the source map still holds every input token, and sizes count them
    for row in range(3):
        held = torch.bincount(out.token_source[row], minlength=out.last_hidden_state.shape[1]).float()
        assert torch.equal(held, out.token_sizes[row, :, 0])
    assert torch.all(out.token_source[:, 0] == 0)
    # spatial order is another computation from the second layer on (the even/odd split runs over another order)
    assert not torch.equal(
        unmerge(spatial.last_hidden_state, spatial.token_source), unmerge(out.last_hidden_state, out.token_source)
    )


def test_tome_order_batch_equals_one_by_one_and_is_refused_by_text_towers():
    model = apply_turbo(build("dinov2"), TurboConfig(r=7, mode="turbo", token_order="tome"))
    pixel_values = inputs("dinov2", batch=3)["pixel_values"]
    with torch.no_grad():
        batched = model(pixel_values=pixel_values).last_hidden_state
        singles = torch.cat([model(pixel_values=x[None]).last_hidden_state for x in pixel_values])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    clip = build("clip")
    with pytest.raises(ValueError, match="token_order='tome'.*CLIPTextModel needs them in their original order"):
        apply_turbo(clip.text_model, TurboConfig(r=2, mode="tome", token_order="tome"))
