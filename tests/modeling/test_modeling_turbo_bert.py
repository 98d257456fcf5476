"""Turbo in `BertModel` (text encoders such as sentence-transformers' MiniLM), on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

import turbo_hf
from turbo_hf import TurboBertModel, TurboConfig, apply_turbo, remove_turbo, unmerge

LENGTH = 24
ROW_LENGTHS = (24, 17, 12, 9)  # real tokens per row of the padded batch (right padding)


def bert_config(attn: str = "sdpa", **kw) -> BertConfig:
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        **kw,
    )
    config._attn_implementation = attn
    return config


def build(attn: str = "sdpa", seed: int = 0, **kw) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(bert_config(attn, **kw)).eval()


def padded_batch(lengths=ROW_LENGTHS, length: int = LENGTH, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids ([CLS]=2 first, [SEP]=3 last, pad 0) with mixed token types, and the mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (len(lengths), length), generator=generator)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    types = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1] = 2, 3
        ids[row, n:] = 0
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def row_alone(batch: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    n = int(batch["attention_mask"][row].sum())
    return {k: v[row : row + 1, :n] for k, v in batch.items()}


def mean_pool(output, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers mean pooling over the unmerged tokens with the input mask."""
    hidden = output.last_hidden_state
    if getattr(output, "token_source", None) is not None:
        hidden = unmerge(hidden, output.token_source)
    mask = attention_mask[..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_r0_is_bit_identical_to_stock_with_padding(attn):
    model = build(attn)
    batch = padded_batch()
    with torch.no_grad():
        reference = model(**batch)
        for config in (TurboConfig(), TurboConfig(r=0), TurboConfig(r=[0, 0, 0], mode="random")):
            apply_turbo(model, config)
            assert type(model) is TurboBertModel
            out = model(**batch)
            assert torch.equal(out.last_hidden_state, reference.last_hidden_state)
            assert torch.equal(out.pooler_output, reference.pooler_output)
            assert torch.equal(out.token_sizes, torch.ones(len(ROW_LENGTHS), LENGTH, 1))
            assert torch.equal(out.token_mask, batch["attention_mask"].bool())
            remove_turbo(model)


def test_remove_turbo_restores_the_stock_model():
    model = build()
    classes = {name: type(m) for name, m in model.named_modules()}
    batch = padded_batch()
    with torch.no_grad():
        reference = model(**batch)
        apply_turbo(model, TurboConfig(r=3))
        merged = model(**batch)
        assert merged.last_hidden_state.shape[1] == LENGTH - 9
        remove_turbo(model)
        out = model(**batch)
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert type(model) is BertModel and not hasattr(model, "turbo_runtime")
    assert not turbo_hf.is_turbo_applied(model)
    assert torch.equal(out.last_hidden_state, reference.last_hidden_state)
    assert torch.equal(out.pooler_output, reference.pooler_output)


@pytest.mark.parametrize("mode", ["turbo", "tome"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padded_batch_equals_each_row_alone(attn, mode):
    model = apply_turbo(build(attn), TurboConfig(r=2, mode=mode))
    batch = padded_batch()
    with torch.no_grad():
        out = model(**batch)
        pooled = mean_pool(out, batch["attention_mask"])
        for row, n in enumerate(ROW_LENGTHS):
            alone_inputs = row_alone(batch, row)
            alone = model(**alone_inputs)
            assert alone.last_hidden_state.shape[1] == n - 6  # 3 layers x r=2, whatever the row length
            real = out.token_mask[row]
            assert int(real.sum()) == n - 6  # padding only ever merged with padding
            torch.testing.assert_close(out.last_hidden_state[row][real], alone.last_hidden_state[0])
            assert torch.equal(out.token_sizes[row][real], alone.token_sizes[0])
            assert torch.equal(out.token_source[row, :n], alone.token_source[0])
            torch.testing.assert_close(out.pooler_output[row], alone.pooler_output[0])
            torch.testing.assert_close(pooled[row], mean_pool(alone, alone_inputs["attention_mask"])[0])


@pytest.mark.parametrize("r", [2, 4, 5])
def test_padding_is_never_merged_into_real_tokens(r):
    """Rows with lots of padding and an r that must also remove padding tokens (filler merges)."""
    model = apply_turbo(build(), TurboConfig(r=r, mode="random"))
    lengths = (24, 20, 14, 11)
    batch = padded_batch(lengths)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        out = model(**batch)
    assert out.last_hidden_state.shape[1] == turbo_hf.turbo_plan(model, LENGTH)["token_counts"][-1]
    held_by = out.token_mask.gather(1, out.token_source)  # is the output token holding input i a real token?
    assert torch.equal(held_by, mask)  # real inputs -> real outputs, padding -> padding outputs
    real_sizes = (out.token_sizes[..., 0] * out.token_mask).sum(1)
    assert torch.equal(real_sizes, mask.sum(1).float())
    assert torch.equal(out.token_sizes[..., 0].sum(1), torch.full((len(lengths),), float(LENGTH)))
    # [CLS] is never merged: input 0 is alone in output 0, and the pooler reads it
    assert torch.equal(out.token_source[:, 0], torch.zeros(len(lengths), dtype=torch.long))
    assert torch.equal(out.token_sizes[:, 0, 0], torch.ones(len(lengths)))


def test_left_padding_is_refused():
    model = apply_turbo(build(), TurboConfig(r=2))
    batch = padded_batch()
    left = {k: v.flip(1) for k, v in batch.items()}
    with pytest.raises(ValueError, match="right padding"):
        model(**left)


def test_decoder_bert_is_refused():
    model = build(is_decoder=True)
    with pytest.raises(ValueError, match="decoder"):
        apply_turbo(model, TurboConfig(r=2))
    assert type(model) is BertModel and not turbo_hf.is_turbo_applied(model)


@pytest.mark.parametrize("mode", ["turbo", "tome"])
def test_sdpa_and_eager_agree_when_merging(mode):
    eager = apply_turbo(build("eager"), TurboConfig(r=3, mode=mode))
    sdpa = apply_turbo(build("sdpa"), TurboConfig(r=3, mode=mode))
    batch = padded_batch()
    with torch.no_grad():
        a, b = eager(**batch), sdpa(**batch)
    assert a.last_hidden_state.shape[1] == LENGTH - 9
    assert torch.equal(a.token_source, b.token_source)
    assert torch.equal(a.token_mask, b.token_mask)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=1e-4)


def test_turbo_bert_checkpoint_round_trip(tmp_path):
    stock = build()
    stock.save_pretrained(tmp_path / "stock")
    batch = padded_batch()
    with torch.no_grad():
        reference = stock(**batch)

    same, info = TurboBertModel.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.equal(same.eval()(**batch).last_hidden_state, reference.last_hidden_state)

    model = TurboBertModel.from_pretrained(tmp_path / "stock", turbo_config=TurboConfig(r=3, mode="tome")).eval()
    with torch.no_grad():
        merged = model(**batch)
    assert merged.last_hidden_state.shape[1] == LENGTH - 9
    model.save_pretrained(tmp_path / "turbo")

    loaded = AutoModel.from_pretrained(tmp_path / "turbo").eval()
    assert type(loaded) is TurboBertModel
    assert turbo_hf.get_turbo_config(loaded).r == 3 and turbo_hf.get_turbo_config(loaded).mode == "tome"
    with torch.no_grad():
        again = loaded(**batch)
    for name in ("last_hidden_state", "pooler_output", "token_sizes", "token_source", "token_mask"):
        assert torch.equal(getattr(again, name), getattr(merged, name)), name
