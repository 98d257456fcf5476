"""Turbo for BLIP on tiny random models: the vision encoder, captioning, retrieval (ITM and ITC), VQA and
`BlipModel`; the `log(size)` bias in the text cross-attention; loading and Hub folders (with remote code).

BLIP's stock vision attention is eager only (no SDPA); the Turbo one goes through the attention interface, so it
equals the stock eager output exactly at r=0 and, on SDPA, agrees with eager while merging.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipModel,
    BlipVisionConfig,
    BlipVisionModel,
)

from transformers.models.blip.modeling_blip_text import BlipTextAttention

from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo_plan, unmerge
from turbo_hf.modeling.modeling_turbo_blip import (
    TurboBlipAttention,
    TurboBlipConfig,
    TurboBlipForConditionalGeneration,
    TurboBlipForImageTextRetrieval,
    TurboBlipForQuestionAnswering,
    TurboBlipModel,
    TurboBlipTextCrossAttention,
    TurboBlipVisionModel,
    image_cross_attention_modules,
)
from turbo_hf.modeling.merging import proportional_bias


IMAGE, PATCH, TOKENS = 32, 4, 65  # 64 patches + [CLS]
BOS, SEP, PAD = 97, 98, 0
GEN = dict(max_new_tokens=5)


# large initial weights, so that the tiny decoder's choices depend on the image (BLIP's vision default is 1e-10)
TOWER = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)


def text_kwargs():
    special = dict(bos_token_id=BOS, sep_token_id=SEP, eos_token_id=2, pad_token_id=PAD)
    return dict(TOWER, vocab_size=99, num_hidden_layers=2, max_position_embeddings=64, initializer_range=0.3, **special)


def vision_kwargs():
    return dict(TOWER, num_hidden_layers=4, image_size=IMAGE, patch_size=PATCH, initializer_range=0.2)


def blip_config(config_class=BlipConfig, **kw):
    return config_class(
        text_config=text_kwargs(),
        vision_config=vision_kwargs(),
        projection_dim=16,
        image_text_hidden_size=16,
        initializer_range=0.3,
        **kw,
    )


STOCK = {
    "caption": BlipForConditionalGeneration,
    "retrieval": BlipForImageTextRetrieval,
    "vqa": BlipForQuestionAnswering,
    "model": BlipModel,
}
TURBO = {
    "caption": TurboBlipForConditionalGeneration,
    "retrieval": TurboBlipForImageTextRetrieval,
    "vqa": TurboBlipForQuestionAnswering,
    "model": TurboBlipModel,
}


def build(name, seed=0):
    torch.manual_seed(seed)
    return STOCK[name](blip_config()).eval()


def pixels(batch, seed=1):
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def text(batch, length=6, seed=2):
    ids = torch.randint(3, 90, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = SEP
    return ids


def padded_text():
    """Three texts of lengths 6, 4 and 2, right-padded, with their attention mask."""
    ids, mask = text(3), torch.ones(3, 6, dtype=torch.long)
    for row, length in ((1, 4), (2, 2)):
        ids[row, length - 1] = SEP
        ids[row, length:] = PAD
        mask[row, length:] = 0
    return ids, mask


def outputs(name, model, batch=2):
    """Every tensor a user reads from each model (forward and generate), as a dict."""
    px = pixels(batch)
    with torch.no_grad():
        if name == "caption":
            return {
                "logits": model(pixel_values=px, input_ids=text(batch)).logits,
                "ids": model.generate(pixel_values=px, **GEN),
            }
        if name == "retrieval":
            return {
                "itm": model(input_ids=text(batch), pixel_values=px).itm_score,
                "itc": model(input_ids=text(batch), pixel_values=px, use_itm_head=False).itm_score,
            }
        if name == "vqa":
            answer = text(batch, length=3, seed=3)
            answer[:, 0] = BOS
            return {
                "loss": model(input_ids=text(batch), pixel_values=px, labels=answer).loss,
                "ids": model.generate(input_ids=text(batch), pixel_values=px, **GEN),
            }
        out = model(input_ids=text(batch), pixel_values=px)
        return {
            "logits": out.logits_per_image,
            "multimodal": model.get_multimodal_features(input_ids=text(batch), pixel_values=px),
        }


def assert_all_equal(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


# ------------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("name", list(STOCK))
def test_r0_is_the_stock_model_and_remove_restores_it(name):
    model = build(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = outputs(name, model)

    apply_turbo(model, TurboConfig(r=0))
    assert_all_equal(outputs(name, model), reference)
    assert all(type(m) is TurboBlipTextCrossAttention for m in image_cross_attention_modules(model))
    apply_turbo(model, TurboConfig(r=6))
    merged = outputs(name, model)
    changed = [key for key in reference if not torch.equal(merged[key], reference[key])]
    # ITC and BlipModel's logits read [CLS], which never merges, but it sees merged tokens in later layers
    assert changed, name
    assert list(model.state_dict()) == list(state)
    remove_turbo(model)

    assert_all_equal(outputs(name, model), reference)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(type(m).__name__.startswith("Turbo") for m in model.modules())


def test_vqa_answer_decoder_keeps_the_stock_cross_attention():
    model = apply_turbo(build("vqa"), r=4)
    outputs("vqa", model)
    assert all(type(layer.crossattention) is TurboBlipTextCrossAttention for layer in model.text_encoder.encoder.layer)
    assert not any(type(m).__name__.startswith("Turbo") for m in model.text_decoder.modules())


def test_turbo_vision_attention_with_a_bias_matches_sdpa():
    torch.manual_seed(0)
    vision = BlipVisionModel(BlipVisionConfig(**vision_kwargs())).eval()
    attention = vision.encoder.layers[0].self_attn
    attention.__class__ = TurboBlipAttention
    hidden = torch.randn(2, 9, 32)
    bias = torch.randn(2, 1, 1, 9)
    with torch.no_grad():
        output, probs, query, keys = attention(hidden, attention_mask=bias)
        _, _, values = attention.qkv(hidden).view(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
        expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=bias)
        expected = attention.projection(expected.transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert probs.shape == (2, 4, 9, 9) and query.shape == keys.shape == (2, 4, 9, 8)


def test_vision_model_on_sdpa_agrees_with_eager_while_merging():
    torch.manual_seed(0)
    model = apply_turbo(BlipVisionModel(BlipVisionConfig(**vision_kwargs())).eval(), TurboConfig(r=[6, 0, 9, 3]))
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        eager = model(pixel_values=pixels(2))
        model.config._attn_implementation = "sdpa"
        sdpa = model(pixel_values=pixels(2))
    assert sdpa.last_hidden_state.shape[1] == TOKENS - 18
    assert torch.equal(sdpa.token_source, eager.token_source)
    torch.testing.assert_close(sdpa.last_hidden_state, eager.last_hidden_state, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ vision side


def test_vision_model_counts_sizes_and_keeps_cls():
    torch.manual_seed(0)
    model = apply_turbo(BlipVisionModel(BlipVisionConfig(**vision_kwargs())).eval(), TurboConfig(r=[6, 0, 9, 3]))
    assert type(model) is TurboBlipVisionModel
    with torch.no_grad():
        out = model(pixel_values=pixels(3), output_hidden_states=True, output_attentions=True)
    counts = turbo_plan(model)["token_counts"]
    assert counts == [TOKENS, TOKENS - 6, TOKENS - 6, TOKENS - 15, TOKENS - 18]
    assert [h.shape[1] for h in out.hidden_states] == counts
    assert [a.shape[-1] for a in out.attentions] == counts[:-1]
    assert out.last_hidden_state.shape[1] == counts[-1]
    assert torch.all(out.token_sizes.sum(dim=1) == TOKENS)
    assert torch.all(out.token_source[:, 0] == 0) and torch.all(out.token_sizes[:, 0] == 1)
    assert torch.equal(out.pooler_output, model.post_layernorm(out.last_hidden_state[:, 0]))


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = apply_turbo(build("caption"), TurboConfig(r=[8, 4, 4, 4])).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        ids = text(2)
        model(pixel_values=pixels(2), input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(key.startswith("vision_model.encoder") for key in grads[0])
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------- cross-attention (the fix)


def test_cross_attention_bias_equals_attending_to_the_unmerged_tokens():
    """Proportional attention over merged tokens is exactly attention over every original patch (a merged token
    copied once per patch): the Turbo text side must match the stock text side fed the unmerged image tokens."""
    px, ids = pixels(2), text(2)
    caption = apply_turbo(build("caption"), r=8)
    itm = apply_turbo(build("retrieval"), r=8)
    with torch.no_grad():
        out = caption(pixel_values=px, input_ids=ids)
        full = unmerge(out.last_hidden_state, out.token_source)
        expected = caption.text_decoder(input_ids=ids, encoder_hidden_states=full).logits
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)

        out = itm(input_ids=ids, pixel_values=px)
        full = unmerge(out.last_hidden_state, out.token_source)
        expected = itm.itm_head(itm.text_encoder(input_ids=ids, encoder_hidden_states=full).last_hidden_state[:, 0])
        torch.testing.assert_close(out.itm_score, expected, atol=1e-5, rtol=1e-5)


def test_stock_cross_attention_drops_the_mask_and_the_turbo_one_applies_it():
    model = apply_turbo(build("caption"), r=8)
    px, ids = pixels(2), text(2)
    decoder = model.text_decoder
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids)
        image, bias = out.last_hidden_state, proportional_bias(out.token_sizes, out.last_hidden_state.dtype)
        assert bias.shape == (2, 1, 1, image.shape[1]) and bias.abs().sum() > 0
        with_bias = decoder(input_ids=ids, encoder_hidden_states=image, encoder_attention_mask=bias).logits
        assert torch.equal(with_bias, out.logits)
        without_bias = decoder(input_ids=ids, encoder_hidden_states=image).logits
        assert not torch.allclose(without_bias, out.logits, atol=1e-4)
        for module in image_cross_attention_modules(model):
            module.__class__ = BlipTextAttention
        # Transformers 5.23: the stock cross-attention ignores `encoder_attention_mask`
        stock = decoder(input_ids=ids, encoder_hidden_states=image, encoder_attention_mask=bias).logits
        assert torch.equal(stock, without_bias)


# ------------------------------------------------------------------------------- batching, padding, generate


@pytest.mark.parametrize("num_beams", [1, 2])
def test_caption_generate_batched_equals_one_by_one(num_beams):
    model = apply_turbo(build("caption"), r=8)
    px = pixels(3)
    with torch.no_grad():
        batched = model.generate(pixel_values=px, num_beams=num_beams, **GEN)
        singles = [model.generate(pixel_values=x[None], num_beams=num_beams, **GEN) for x in px]
        logits = model(pixel_values=px, input_ids=text(3)).logits
        single_logits = torch.cat([model(pixel_values=x[None], input_ids=t[None]).logits for x, t in zip(px, text(3))])
    for row, single in enumerate(singles):
        assert torch.equal(batched[row, : single.shape[1]], single[0])
    torch.testing.assert_close(logits, single_logits, atol=1e-5, rtol=1e-5)


def test_caption_with_padded_prompts_batched_equals_one_by_one():
    model = apply_turbo(build("caption"), r=8)
    px, (ids, mask) = pixels(3), padded_text()
    with torch.no_grad():
        batched = model(pixel_values=px, input_ids=ids, attention_mask=mask).logits
        for row in range(3):
            length = int(mask[row].sum())
            single = model(pixel_values=px[row : row + 1], input_ids=ids[row : row + 1, :length]).logits
            torch.testing.assert_close(batched[row : row + 1, :length], single, atol=1e-5, rtol=1e-5)


def test_retrieval_with_padded_text_batched_equals_one_by_one():
    model = apply_turbo(build("retrieval"), r=8)
    px, (ids, mask) = pixels(3), padded_text()
    with torch.no_grad():
        itm = model(input_ids=ids, pixel_values=px, attention_mask=mask).itm_score
        itc = model(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False).itm_score
        for row in range(3):
            length = int(mask[row].sum())
            args = dict(input_ids=ids[row : row + 1, :length], pixel_values=px[row : row + 1])
            torch.testing.assert_close(itm[row : row + 1], model(**args).itm_score, atol=1e-5, rtol=1e-5)
            single_itc = model(**args, use_itm_head=False).itm_score
            torch.testing.assert_close(itc[row : row + 1, row : row + 1], single_itc, atol=1e-5, rtol=1e-5)


def test_vqa_batched_equals_one_by_one():
    # questions of one length: the stock BLIP answer decoder attends to question padding (by design)
    model = apply_turbo(build("vqa"), r=8)
    px, questions = pixels(3), text(3)
    answer = text(3, length=3, seed=3)
    answer[:, 0] = BOS
    with torch.no_grad():
        batched = model.generate(input_ids=questions, pixel_values=px, **GEN)
        logits = model(input_ids=questions, pixel_values=px, decoder_input_ids=answer).logits
        for row in range(3):
            args = dict(input_ids=questions[row : row + 1], pixel_values=px[row : row + 1])
            single = model.generate(**args, **GEN)[0]
            assert torch.equal(batched[row, : single.shape[0]], single)
            single_logits = model(**args, decoder_input_ids=answer[row : row + 1]).logits
            torch.testing.assert_close(logits[row : row + 1], single_logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ checkpoints, Hub, Auto


def run_remote_caption(folder, tensors_path):
    """Load the captioning folder with trust_remote_code where turbo_hf cannot be imported; compare outputs."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None  # any `import turbo_hf` now fails
        import torch, transformers
        pixel_values, ids, logits, generated = torch.load({str(tensors_path)!r})
        model = transformers.AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            same_logits = torch.equal(model(pixel_values=pixel_values, input_ids=ids).logits, logits)
            same_ids = torch.equal(model.generate(pixel_values=pixel_values, max_new_tokens=5), generated)
        print("REMOTE", type(model).__name__, same_logits, same_ids)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def test_caption_checkpoint_to_turbo_folder_and_back_with_remote_code(tmp_path):
    stock = build("caption")
    stock.save_pretrained(tmp_path / "stock")
    px, ids = pixels(2), text(2)
    with torch.no_grad():
        reference = stock(pixel_values=px, input_ids=ids).logits

    same, info = TurboBlipForConditionalGeneration.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.equal(same.eval()(pixel_values=px, input_ids=ids).logits, reference)

    model = TurboBlipForConditionalGeneration.from_pretrained(tmp_path / "stock", turbo_config=TurboConfig(r=6))
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=px, input_ids=ids).logits
        generated = model.generate(pixel_values=px, **GEN)
    assert not torch.equal(logits, reference)

    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "turbo_blip" and config["turbo_config"]["r"] == 6
    assert config["auto_map"] == {
        "AutoConfig": "modeling_turbo_blip.TurboBlipConfig",
        "AutoModelForImageTextToText": "modeling_turbo_blip.TurboBlipForConditionalGeneration",
    }
    assert (folder / "modeling_turbo_blip.py").exists() and (folder / "turbo_encoder.py").exists()

    loaded = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is TurboBlipForConditionalGeneration
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=px, input_ids=ids).logits, logits)
        assert torch.equal(loaded.generate(pixel_values=px, **GEN), generated)

    torch.save((px, ids, logits, generated), tmp_path / "tensors.pt")
    result = run_remote_caption(folder, tmp_path / "tensors.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboBlipForConditionalGeneration True True" in result.stdout


@pytest.mark.parametrize(
    "name, auto_class",
    [("vqa", "AutoModelForVisualQuestionAnswering"), ("model", "AutoModel"), ("retrieval", None)],
)
def test_other_heads_load_stock_checkpoints_and_round_trip(name, auto_class, tmp_path):
    turbo_class = TURBO[name]
    build(name).save_pretrained(tmp_path / "stock")
    model, info = turbo_class.from_pretrained(
        tmp_path / "stock", turbo_config=TurboConfig(r=6), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected = outputs(name, model.eval())
    model.save_pretrained(tmp_path / "turbo")
    auto_map = json.loads((tmp_path / "turbo" / "config.json").read_text())["auto_map"]
    if auto_class is None:  # retrieval: no Auto class in Transformers; its own folder maps AutoModel to it
        assert auto_map["AutoModel"] == "modeling_turbo_blip.TurboBlipForImageTextRetrieval"
        loaded = turbo_class.from_pretrained(tmp_path / "turbo")
    else:
        assert auto_map[auto_class] == f"modeling_turbo_blip.{turbo_class.__name__}"
        loaded = getattr(transformers, auto_class).from_pretrained(tmp_path / "turbo")
    assert type(loaded) is turbo_class
    assert_all_equal(outputs(name, loaded.eval()), expected)


def test_auto_registration():
    config = blip_config(TurboBlipConfig, turbo_config={"r": 2})
    assert type(transformers.AutoModelForImageTextToText.from_config(config)) is TurboBlipForConditionalGeneration
    assert type(transformers.AutoModelForVisualQuestionAnswering.from_config(config)) is TurboBlipForQuestionAnswering
    assert type(transformers.AutoModel.from_config(config)) is TurboBlipModel
    vision = transformers.AutoModel.from_config(
        transformers.AutoConfig.for_model("turbo_blip_vision_model", **vision_kwargs(), turbo_config={"r": 2})
    )
    assert type(vision) is TurboBlipVisionModel and vision.turbo_runtime.schedule(TOKENS) == [2, 2, 2, 2]
