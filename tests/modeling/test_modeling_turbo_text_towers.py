"""Turbo on the CLIP and SigLIP text towers: exact at r=0, padded batches equal rows alone, causal merges."""

import pytest
import torch

from turbo_hf.testing.tiny_models import build
from turbo_hf import TurboConfig, apply_turbo, remove_turbo
from turbo_hf.modeling.merging import bipartite_plan


def text_inputs(name):
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 90, (3, 16), generator=generator)
    if name == "siglip":  # SigLIP pads to a fixed length and pools the last token, without a mask
        return ids, None
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, 10:], mask[2, 6:] = 0, 0
    ids[0, 15], ids[1, 9], ids[2, 5] = 98, 98, 98  # EOS
    return ids, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_text_tower_exact_at_r0_and_batched_equals_alone(name, attn):
    model = build(name, attn)
    tower = model.text_model
    ids, mask = text_inputs(name)
    with torch.no_grad():
        reference = tower(input_ids=ids, attention_mask=mask).pooler_output
        apply_turbo(tower, TurboConfig(r=0))
        assert torch.equal(tower(input_ids=ids, attention_mask=mask).pooler_output, reference)
        apply_turbo(tower, TurboConfig(r=2))
        out = tower(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert [h.shape[1] for h in out.hidden_states] == [16, 14, 12]
        lengths = mask.sum(1).tolist() if mask is not None else [16] * 3
        alone = torch.cat([tower(input_ids=ids[b : b + 1, : lengths[b]]).pooler_output for b in range(3)])
    torch.testing.assert_close(out.pooler_output, alone, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out.pooler_output, reference)
    remove_turbo(tower)
    with torch.no_grad():
        assert torch.equal(tower(input_ids=ids, attention_mask=mask).pooler_output, reference)


def test_the_vision_tower_of_the_same_model_is_patched_separately():
    model = build("clip")
    apply_turbo(model, r=4)
    apply_turbo(model.text_model, r=2)
    assert type(model.vision_model.encoder.layers[0]).__name__ == "TurboCLIPEncoderLayer"
    assert type(model.text_model.encoder.layers[0]).__name__ == "TurboCLIPTextEncoderLayer"
    remove_turbo(model.text_model)
    assert type(model.text_model.encoder.layers[0]).__name__ == "CLIPEncoderLayer"
    assert type(model.vision_model.encoder.layers[0]).__name__ == "TurboCLIPEncoderLayer"


def test_causal_merges_only_go_forward_and_padding_stays_apart():
    torch.manual_seed(0)
    metric = torch.nn.functional.normalize(torch.randn(4, 12, 8), dim=-1)
    token_mask = torch.ones(4, 12, dtype=torch.bool)
    token_mask[1, 7:] = False
    token_mask[3, 4:] = False
    plan = bipartite_plan(metric, 4, mode="tome", protect_first=False, causal=True, token_mask=token_mask)
    assert torch.all(plan.dst_idx > plan.src_idx)
    assert torch.all(token_mask.gather(1, plan.src_idx) == token_mask.gather(1, plan.dst_idx))
    # rows with few real tokens fill up with padding only after their real candidates
    assert plan.src_idx.shape[1] == 4


def test_left_padding_is_refused():
    tower = build("clip").text_model
    apply_turbo(tower, r=2)
    ids, mask = text_inputs("clip")
    with pytest.raises(ValueError, match="right padding"):
        tower(input_ids=ids, attention_mask=mask.flip(1))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_public_text_classes_run_alone_built_from_a_config(name):
    from turbo_hf.modeling import TurboCLIPTextModel, TurboSiglipTextModel

    turbo_class = {"clip": TurboCLIPTextModel, "siglip": TurboSiglipTextModel}[name]
    stock = build(name, "sdpa").text_model
    ids, mask = text_inputs(name)
    with torch.no_grad():
        reference = stock(input_ids=ids, attention_mask=mask).pooler_output
        model = turbo_class(stock.config).eval()  # no `turbo_config` in the config: r=0, the stock computation
        model.load_state_dict(stock.state_dict())
        assert type(model) is turbo_class and model.turbo_runtime.schedule(16) == [0, 0]
        assert torch.equal(model(input_ids=ids, attention_mask=mask).pooler_output, reference)

        config = stock.config.__class__.from_dict(stock.config.to_dict())
        config.turbo_config = TurboConfig(r=2)
        merging = turbo_class(config).eval()
        merging.load_state_dict(stock.state_dict())
        out = merging(input_ids=ids, attention_mask=mask)
    assert out.last_hidden_state.shape[1] == 12 and not torch.equal(out.pooler_output, reference)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_public_text_classes_load_a_stock_checkpoint_with_turbo_settings_and_keep_them(name, tmp_path):
    from turbo_hf.modeling import TurboCLIPTextModel, TurboSiglipTextModel

    turbo_class = {"clip": TurboCLIPTextModel, "siglip": TurboSiglipTextModel}[name]
    stock = build(name, "sdpa").text_model.eval()
    stock.save_pretrained(tmp_path / "stock")
    ids, mask = text_inputs(name)
    merging = apply_turbo(build(name, "sdpa").text_model.eval(), TurboConfig(r=2))
    model = turbo_class.from_pretrained(tmp_path / "stock", turbo_config=TurboConfig(r=2)).eval()
    model.save_pretrained(tmp_path / "turbo")
    again = turbo_class.from_pretrained(tmp_path / "turbo").eval()
    with torch.no_grad():
        expected = merging(input_ids=ids, attention_mask=mask).pooler_output
        assert not torch.equal(expected, stock(input_ids=ids, attention_mask=mask).pooler_output)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).pooler_output, expected)
        assert torch.equal(again(input_ids=ids, attention_mask=mask).pooler_output, expected)
