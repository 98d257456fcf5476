"""Turbo for InstructBLIP on tiny random models: exactness at r=0 (logits and generated ids), the log(size) bias
in the instruction-aware Q-Former, batching with padding on both text inputs, stock checkpoints, the Auto class
and remote code (the family file and the kit: the vision layers and Q-Former inputs it shares with BLIP-2)."""

import json

import pytest
import torch
import transformers
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipVisionModel

from test_modeling_turbo_blip2 import (
    GEN,
    IMAGE_TOKEN,
    OPT,
    QUERIES,
    REMOTE_CALL,
    TOKENS,
    VISION,
    pixels,
    prompts,
    qformer_masks,
    randomize,
    run_remote,
    set_attention,
)
from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo_plan
from turbo_hf.modeling.modeling_turbo_instructblip import TurboInstructBlipConfig, TurboInstructBlipForConditionalGeneration


QFORMER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    cross_attention_frequency=1,
    vocab_size=50,
    max_position_embeddings=32,
)


def build(attn="sdpa"):
    torch.manual_seed(0)
    config = InstructBlipConfig(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=OPT,
        num_query_tokens=QUERIES,
        image_token_index=IMAGE_TOKEN,
    )
    return randomize(InstructBlipForConditionalGeneration(set_attention(config, attn)))


def instructions(lengths, seed=5):
    """Right-padded Q-Former instructions (BERT-style, pad id 0) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 50, (n,), generator=generator)
        mask[row, :n] = 1
    return ids, mask


def make_inputs(batch, lm_lengths=None, qformer_lengths=None):
    ids, mask = prompts(lm_lengths or [3] * batch)
    q_ids, q_mask = instructions(qformer_lengths or [4] * batch)
    return dict(
        pixel_values=pixels(batch),
        input_ids=ids,
        attention_mask=mask,
        qformer_input_ids=q_ids,
        qformer_attention_mask=q_mask,
    )


def logits_and_ids(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits, model.generate(**inputs, **GEN)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_r0_is_the_stock_model_and_remove_restores_it(attn):
    model = build(attn)
    inputs = make_inputs(2, [3, 5], [4, 2])
    reference = logits_and_ids(model, inputs)

    apply_turbo(model, r=0)
    assert type(model) is TurboInstructBlipForConditionalGeneration
    seen, handle = qformer_masks(model)
    got = logits_and_ids(model, inputs)
    handle.remove()
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
    assert len(seen) == 2 and all(m.dtype == torch.long and m.shape == (2, TOKENS) and bool(m.all()) for m in seen)

    apply_turbo(model, r=8)
    assert not torch.allclose(logits_and_ids(model, inputs)[0], reference[0], atol=1e-3)
    remove_turbo(model)
    assert not any(type(m).__name__.startswith("Turbo") for m in model.modules())
    assert torch.equal(logits_and_ids(model, inputs)[0], reference[0])


def test_log_size_bias_reaches_the_qformer_in_forward_and_generate():
    model = apply_turbo(build(), r=8)
    inputs = make_inputs(2, [3, 5], [4, 2])
    seen, handle = qformer_masks(model)
    with torch.no_grad():
        out = model(**inputs)
        generated = model.generate(**inputs, output_logits=True, return_dict_in_generate=True, **GEN)
    handle.remove()
    sizes = out.vision_outputs.token_sizes
    assert out.vision_outputs.last_hidden_state.shape[1] == TOKENS - 16 == turbo_plan(model)["token_counts"][-1]
    assert torch.all(sizes.sum(dim=1) == TOKENS) and sizes.max() > 1
    assert len(seen) == 2
    for encoder_mask in seen:
        assert encoder_mask.shape == (2, 1, 1, TOKENS - 16) and encoder_mask.dtype == torch.float32
        assert torch.equal(encoder_mask[:, 0, 0], sizes[..., 0].log())
    torch.testing.assert_close(generated.logits[0], out.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree_while_merging():
    inputs = make_inputs(2, [3, 5], [4, 2])
    results = {attn: logits_and_ids(apply_turbo(build(attn), r=8), inputs) for attn in ("eager", "sdpa")}
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(results["eager"][0][real], results["sdpa"][0][real], atol=1e-5, rtol=1e-5)
    assert torch.equal(results["eager"][1], results["sdpa"][1])


def test_batched_generate_with_padding_equals_one_by_one():
    model = apply_turbo(build(), TurboConfig(r=8))
    inputs = make_inputs(3, [2, 6, 4], [5, 2, 3])
    logits, generated = logits_and_ids(model, inputs)
    new = GEN["max_new_tokens"]
    for row in range(3):
        keep, q_keep = inputs["attention_mask"][row].bool(), inputs["qformer_attention_mask"][row].bool()
        single = dict(
            pixel_values=inputs["pixel_values"][row : row + 1],
            input_ids=inputs["input_ids"][row : row + 1, keep],
            attention_mask=inputs["attention_mask"][row : row + 1, keep],
            qformer_input_ids=inputs["qformer_input_ids"][row : row + 1, q_keep],
            qformer_attention_mask=inputs["qformer_attention_mask"][row : row + 1, q_keep],
        )
        single_logits, single_ids = logits_and_ids(model, single)
        torch.testing.assert_close(logits[row, keep], single_logits[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(generated[row, -new:], single_ids[0, -new:])


def test_vision_model_alone():
    torch.manual_seed(0)
    vision = randomize(InstructBlipVisionModel(build().config.vision_config))
    pixel_values = pixels(2)
    with torch.no_grad():
        reference = vision(pixel_values).last_hidden_state
        assert torch.equal(apply_turbo(vision, r=0)(pixel_values).last_hidden_state, reference)
        out = apply_turbo(vision, r=[6, 9])(pixel_values, output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [TOKENS, TOKENS - 6, TOKENS - 15]
    assert torch.all(out.token_sizes.sum(dim=1) == TOKENS)


def test_stock_checkpoint_turbo_folder_auto_class_and_remote_code(tmp_path):
    stock = build()
    stock.save_pretrained(tmp_path / "stock")
    inputs = make_inputs(2, [3, 5], [4, 2])
    reference = logits_and_ids(stock, inputs)

    same, info = TurboInstructBlipForConditionalGeneration.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(torch.equal(a, b) for a, b in zip(logits_and_ids(same.eval(), inputs), reference))

    model = TurboInstructBlipForConditionalGeneration.from_pretrained(
        tmp_path / "stock", turbo_config=TurboConfig(r=8)
    ).eval()
    merged = logits_and_ids(model, inputs)
    assert not torch.equal(merged[0], reference[0])

    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "turbo_instructblip" and config["turbo_config"]["r"] == 8
    auto_map = config["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_turbo_instructblip.TurboInstructBlipForConditionalGeneration"
    files = {p.name for p in folder.iterdir()}
    assert {"modeling_turbo_instructblip.py", "turbo_qformer.py", "turbo_attention.py", "turbo_layers.py"} <= files
    assert not {"modeling_turbo_blip2.py", "modeling_turbo_clip.py"} & files

    loaded = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is TurboInstructBlipForConditionalGeneration
    assert isinstance(loaded.config, TurboInstructBlipConfig)
    assert all(torch.equal(a, b) for a, b in zip(logits_and_ids(loaded, inputs), merged))

    torch.save((inputs, merged), tmp_path / "tensors.pt")
    result = run_remote(folder, "AutoModelForImageTextToText", tmp_path / "tensors.pt", REMOTE_CALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboInstructBlipForConditionalGeneration True" in result.stdout
