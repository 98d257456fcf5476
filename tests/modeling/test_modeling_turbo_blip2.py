"""Turbo for BLIP-2 on tiny random models: exactness at r=0 (logits and generated ids), the log(size) bias in
the Q-Former cross-attention and in the eager vision attention, batching with left padding, retrieval (ITM and
ITC), stock checkpoints, Auto classes and remote code."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2VisionModel

from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo_plan, unmerge
from turbo_hf.modeling.modeling_turbo_blip2 import (
    TurboBlip2Config,
    TurboBlip2ForConditionalGeneration,
    TurboBlip2ForImageTextRetrieval,
)


QUERIES = 4
IMAGE_TOKEN = 98
PAD, BOS = 1, 2
TOKENS = 65  # (32 / 4) ** 2 patches + [CLS]
GEN = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
)
QFORMER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    cross_attention_frequency=1,
    vocab_size=99,
    max_position_embeddings=32,
)
OPT = dict(
    model_type="opt",
    hidden_size=32,
    ffn_dim=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=99,
    word_embed_proj_dim=32,
    max_position_embeddings=64,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=BOS,
)


def set_attention(config, attn):
    config._attn_implementation = attn
    for sub in ("vision_config", "qformer_config", "text_config"):
        getattr(config, sub)._attn_implementation = attn
    return config


def blip2_config(attn="sdpa", config_class=Blip2Config, qformer_text=False, **kw):
    config = config_class(
        vision_config=VISION,
        qformer_config=dict(QFORMER, use_qformer_text_input=qformer_text),
        text_config=OPT,
        num_query_tokens=QUERIES,
        image_token_index=IMAGE_TOKEN,
        image_text_hidden_size=16,
        **kw,
    )
    return set_attention(config, attn)


def randomize(model, seed=0):
    """Random weights large enough that every part (query tokens included) moves the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 or "bias" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (1.0 if "query_tokens" in name else 0.2))
    return model.eval()


def build(model_class=Blip2ForConditionalGeneration, attn="sdpa"):
    torch.manual_seed(0)
    # the retrieval Q-Former also runs text through its own feed-forward
    return randomize(model_class(blip2_config(attn, qformer_text=model_class is Blip2ForImageTextRetrieval)))


def pixels(batch, seed=1):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def prompts(lengths, seed=2, prefix=(IMAGE_TOKEN,) * QUERIES + (BOS,)):
    """Left-padded prompts: [pad]*k + image placeholders + <bos> + text; and the attention mask."""
    generator = torch.Generator().manual_seed(seed)
    rows = [list(prefix) + torch.randint(3, 90, (n,), generator=generator).tolist() for n in lengths]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def qformer_masks(model):
    """Record the `encoder_attention_mask` of every Q-Former call."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs.get("encoder_attention_mask"))

    return seen, model.qformer.register_forward_pre_hook(hook, with_kwargs=True)


def logits_and_ids(model, pixel_values, ids, mask):
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
        generated = model.generate(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, **GEN)
    return logits, generated


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_r0_is_the_stock_model_and_remove_restores_it(attn):
    model = build(attn=attn)
    pixel_values, (ids, mask) = pixels(2), prompts([3, 5])
    ref_logits, ref_ids = logits_and_ids(model, pixel_values, ids, mask)

    apply_turbo(model, r=0)
    assert type(model) is TurboBlip2ForConditionalGeneration
    seen, handle = qformer_masks(model)
    logits, generated = logits_and_ids(model, pixel_values, ids, mask)
    handle.remove()
    assert torch.equal(logits, ref_logits) and torch.equal(generated, ref_ids)
    # nothing new reaches the Q-Former: the stock all-ones (B, N) mask
    assert all(m.dtype == torch.long and m.shape == (2, TOKENS) and bool(m.all()) for m in seen) and len(seen) == 2

    apply_turbo(model, r=8)
    logits, generated = logits_and_ids(model, pixel_values, ids, mask)
    assert not torch.allclose(logits, ref_logits, atol=1e-3)
    remove_turbo(model)
    assert type(model) is Blip2ForConditionalGeneration
    assert not any(type(m).__name__.startswith("Turbo") for m in model.modules())
    assert torch.equal(logits_and_ids(model, pixel_values, ids, mask)[0], ref_logits)


def test_log_size_bias_reaches_the_qformer_in_forward_and_generate():
    model = apply_turbo(build(), r=8)
    pixel_values, (ids, mask) = pixels(2), prompts([3, 5])
    seen, handle = qformer_masks(model)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask)
        model.generate(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, **GEN)
    handle.remove()
    sizes = out.vision_outputs.token_sizes
    assert out.vision_outputs.last_hidden_state.shape[1] == TOKENS - 16 == turbo_plan(model)["token_counts"][-1]
    assert torch.all(sizes.sum(dim=1) == TOKENS) and sizes.max() > 1
    assert len(seen) == 2
    for encoder_mask in seen:  # forward, then generate
        assert encoder_mask.shape == (2, 1, 1, TOKENS - 16) and encoder_mask.dtype == torch.float32
        torch.testing.assert_close(encoder_mask[:, 0, 0], sizes[..., 0].log(), atol=0, rtol=0)

    # without proportional attention (or with pruning) the Q-Former gets the stock mask
    for settings in ({"proportional_attention": False}, {"reduction": "prune"}):
        apply_turbo(model, TurboConfig(r=8, **settings))
        seen, handle = qformer_masks(model)
        with torch.no_grad():
            model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask)
        handle.remove()
        assert seen[0].dtype == torch.long and seen[0].shape == (2, TOKENS - 16)


def test_generate_reads_the_same_merged_features_as_forward():
    model = apply_turbo(build(), r=8)
    for batch, lengths in ((1, [4]), (3, [2, 5, 3])):
        pixel_values, (ids, mask) = pixels(batch), prompts(lengths)
        with torch.no_grad():
            logits = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
            out = model.generate(
                pixel_values=pixel_values,
                input_ids=ids,
                attention_mask=mask,
                output_logits=True,
                return_dict_in_generate=True,
                **GEN,
            )
        torch.testing.assert_close(out.logits[0], logits[:, -1], atol=1e-5, rtol=1e-5)
        assert out.sequences.shape == (batch, ids.shape[1] + GEN["max_new_tokens"])


def test_eager_and_sdpa_agree_while_merging_and_eager_honours_the_bias():
    pixel_values, (ids, mask) = pixels(2), prompts([3, 5])
    results = {}
    for attn in ("eager", "sdpa"):
        results[attn] = logits_and_ids(apply_turbo(build(attn=attn), r=8), pixel_values, ids, mask)
    real = mask.bool()  # padded positions are garbage that differs between eager and SDPA in the stock OPT too
    torch.testing.assert_close(results["eager"][0][real], results["sdpa"][0][real], atol=1e-5, rtol=1e-5)
    assert torch.equal(results["eager"][1], results["sdpa"][1])

    # the eager vision attention really adds log(size): without it the encoder output changes
    model = build(attn="eager")
    with torch.no_grad():
        vision = {p: apply_turbo(model, TurboConfig(r=[8, 8], proportional_attention=p)).vision_model(pixel_values)
                  for p in (True, False)}
    assert not torch.allclose(vision[True].last_hidden_state, vision[False].last_hidden_state, atol=1e-4)


def test_batched_generate_with_left_padding_equals_one_by_one():
    model = apply_turbo(build(), TurboConfig(r=8, mode="turbo"))
    lengths = [2, 6, 4]
    pixel_values, (ids, mask) = pixels(3), prompts(lengths)
    logits, generated = logits_and_ids(model, pixel_values, ids, mask)
    new = GEN["max_new_tokens"]
    for row in range(3):
        keep = mask[row].bool()
        single_logits, single_ids = logits_and_ids(
            model, pixel_values[row : row + 1], ids[row : row + 1, keep], mask[row : row + 1, keep]
        )
        torch.testing.assert_close(logits[row, keep], single_logits[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(generated[row, -new:], single_ids[0, -new:])


def test_generate_without_a_prompt():
    stock = build()
    model = apply_turbo(build(), r=0)
    pixel_values = pixels(2)
    with torch.no_grad():
        reference = stock.generate(pixel_values=pixel_values, **GEN)
        assert torch.equal(model.generate(pixel_values=pixel_values, **GEN), reference)
        apply_turbo(model, r=8)
        generated = model.generate(pixel_values=pixel_values, **GEN)
    assert generated.shape == (2, QUERIES + 1 + GEN["max_new_tokens"])


def itm_inputs(batch):
    ids, mask = prompts([5] * batch, seed=4)
    return dict(pixel_values=pixels(batch, seed=3), input_ids=ids, attention_mask=mask)


def retrieval_outputs(model, inputs):
    with torch.no_grad():
        itm = model(**inputs, use_image_text_matching_head=True)
        itc = model(**inputs, use_image_text_matching_head=False)
    return itm.logits_per_image, itc.logits_per_image, itc.image_embeds


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_retrieval_r0_is_stock_and_merging_batches(attn):
    model = build(Blip2ForImageTextRetrieval, attn)
    inputs = itm_inputs(3)
    reference = retrieval_outputs(model, inputs)
    apply_turbo(model, r=0)
    assert type(model) is TurboBlip2ForImageTextRetrieval
    assert all(torch.equal(a, b) for a, b in zip(retrieval_outputs(model, inputs), reference))

    apply_turbo(model, r=8)
    seen, handle = qformer_masks(model)
    itm, itc, image_embeds = retrieval_outputs(model, inputs)
    handle.remove()
    assert [m.shape for m in seen if m is not None] == [(3, 1, 1, TOKENS - 16)] * 2  # ITM and ITC image side
    assert not torch.allclose(itm, reference[0], atol=1e-4) and not torch.allclose(itc, reference[1], atol=1e-4)
    # ITM: each pair on its own; ITC: each image against all texts
    for row in range(3):
        single = {k: v[row : row + 1] for k, v in inputs.items()}
        with torch.no_grad():
            itm_single = model(**single, use_image_text_matching_head=True).logits_per_image
            itc_single = model(
                pixel_values=single["pixel_values"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
            ).logits_per_image
        torch.testing.assert_close(itm[row : row + 1], itm_single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(itc[row : row + 1], itc_single, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], itc)


def test_vision_model_alone_counts_and_attentions():
    torch.manual_seed(0)
    vision = randomize(Blip2VisionModel(set_attention(blip2_config("eager"), "eager").vision_config))
    pixel_values = pixels(2)
    with torch.no_grad():
        reference = vision(pixel_values).last_hidden_state
        apply_turbo(vision, r=0)
        assert torch.equal(vision(pixel_values).last_hidden_state, reference)
        apply_turbo(vision, r=[6, 9])
        out = vision(pixel_values, output_hidden_states=True, output_attentions=True)
    assert [h.shape[1] for h in out.hidden_states] == [TOKENS, TOKENS - 6, TOKENS - 15]
    assert [a.shape[-1] for a in out.attentions] == [TOKENS, TOKENS - 6]
    assert torch.all(out.token_source[:, 0] == 0) and torch.all(out.token_sizes[:, 0] == 1)
    assert unmerge(out.last_hidden_state, out.token_source).shape[1] == TOKENS


def run_remote(folder, auto_class, tensors_path, call):
    """Load `folder` with trust_remote_code where turbo_hf cannot be imported; `call` computes (logits, ids)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None  # any `import turbo_hf` now fails
        import torch, transformers
        inputs, expected = torch.load({str(tensors_path)!r})
        model = getattr(transformers, {auto_class!r}).from_pretrained({str(folder)!r}, trust_remote_code=True)
        model.eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            got = {call}
        print("REMOTE", type(model).__name__, all(torch.equal(a, b) for a, b in zip(got, expected)))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


REMOTE_CALL = (
    "(model(**inputs).logits, model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False))"
)


def test_stock_checkpoint_turbo_folder_auto_class_and_remote_code(tmp_path):
    stock = build()
    stock.save_pretrained(tmp_path / "stock")
    pixel_values, (ids, mask) = pixels(2), prompts([3, 5])
    inputs = dict(pixel_values=pixel_values, input_ids=ids, attention_mask=mask)
    reference = logits_and_ids(stock, pixel_values, ids, mask)

    # a stock checkpoint loads into both Turbo classes without missing or unexpected keys; r=0 is the stock model
    same, info = TurboBlip2ForConditionalGeneration.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(torch.equal(a, b) for a, b in zip(logits_and_ids(same.eval(), pixel_values, ids, mask), reference))

    model = TurboBlip2ForConditionalGeneration.from_pretrained(tmp_path / "stock", turbo_config=TurboConfig(r=8)).eval()
    merged = logits_and_ids(model, pixel_values, ids, mask)
    assert not torch.equal(merged[0], reference[0])

    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "turbo_blip_2" and config["turbo_config"]["r"] == 8
    auto_map = config["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_turbo_blip2.TurboBlip2ForConditionalGeneration"
    assert auto_map["AutoModelForVisualQuestionAnswering"] == "modeling_turbo_blip2.TurboBlip2ForConditionalGeneration"
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_turbo_blip2.TurboBlip2ForImageTextRetrieval"
    files = {p.name for p in folder.iterdir()}
    assert {"modeling_turbo_blip2.py", "turbo_qformer.py", "turbo_encoder.py", "merging.py"} <= files
    assert "modeling_turbo_clip.py" not in files

    loaded = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is TurboBlip2ForConditionalGeneration and isinstance(loaded.config, TurboBlip2Config)
    assert all(torch.equal(a, b) for a, b in zip(logits_and_ids(loaded, pixel_values, ids, mask), merged))
    torch.save((inputs, merged), tmp_path / "tensors.pt")
    result = run_remote(folder, "AutoModelForImageTextToText", tmp_path / "tensors.pt", REMOTE_CALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboBlip2ForConditionalGeneration True" in result.stdout


def test_retrieval_stock_checkpoint_and_auto_class(tmp_path):
    stock = build(Blip2ForImageTextRetrieval)
    stock.save_pretrained(tmp_path / "stock")
    inputs = itm_inputs(2)
    reference = retrieval_outputs(stock, inputs)
    same, info = TurboBlip2ForImageTextRetrieval.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(torch.equal(a, b) for a, b in zip(retrieval_outputs(same.eval(), inputs), reference))

    model = TurboBlip2ForImageTextRetrieval.from_pretrained(tmp_path / "stock", turbo_config={"r": 8}).eval()
    merged = retrieval_outputs(model, inputs)
    model.save_pretrained(tmp_path / "turbo")
    loaded = transformers.AutoModelForZeroShotImageClassification.from_pretrained(tmp_path / "turbo").eval()
    assert type(loaded) is TurboBlip2ForImageTextRetrieval
    assert all(torch.equal(a, b) for a, b in zip(retrieval_outputs(loaded, inputs), merged))


def test_unmerged_tokens_with_the_stock_mask_equal_merged_tokens_with_the_bias():
    """The flex fallback: size copies of a key weigh as much as log(size) on its logit."""
    from turbo_hf.modeling.turbo_qformer import qformer_image_inputs

    model = apply_turbo(build(), r=8)
    with torch.no_grad():
        vision_outputs = model.vision_model(pixels(2))
        merged, bias = qformer_image_inputs(model.vision_model, vision_outputs, model.qformer)
        model.qformer.config._attn_implementation = "flex_attention"
        try:
            full, ones = qformer_image_inputs(model.vision_model, vision_outputs, model.qformer)
        finally:
            model.qformer.config._attn_implementation = "sdpa"
        assert bias.dim() == 4 and full.shape[1] == TOKENS and ones.dtype == torch.long and bool(ones.all())
        queries = model.query_tokens.expand(2, -1, -1)
        with_bias = model.qformer(query_embeds=queries, encoder_hidden_states=merged, encoder_attention_mask=bias)
        copies = model.qformer(query_embeds=queries, encoder_hidden_states=full, encoder_attention_mask=ones)
    torch.testing.assert_close(with_bias.last_hidden_state, copies.last_hidden_state, atol=1e-5, rtol=1e-5)
