"""apply_turbo / remove_turbo: early, clear errors; reapplying; plans."""

import copy
import pickle
import subprocess
import sys

import pytest
import torch
from transformers import Dinov2Backbone, Dinov2ForImageClassification, GPT2Config, GPT2Model, ViTModel
from transformers.models.vit.modeling_vit import ViTLayer

from turbo_hf.testing.tiny_models import build, dinov2_config, inputs, vit_config
from turbo_hf import TurboConfig, TurboDinov2Model, TurboViTModel, apply_turbo, get_turbo_config, is_turbo_applied, remove_turbo, supported_classes, turbo
from turbo_hf.modeling import TurboDinov2Config, TurboViTConfig


def test_unsupported_model_lists_the_supported_classes():
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=99))
    with pytest.raises(ValueError, match="GPT2Model.*Supported classes: .*Dinov2Model.*ViTModel"):
        apply_turbo(gpt2, r=2)
    with pytest.raises(ValueError, match="Dinov2Backbone"):
        apply_turbo(Dinov2Backbone(dinov2_config()), r=2)
    assert "SiglipVisionModel" in supported_classes()


def test_r_list_of_the_wrong_length_fails_at_apply_and_leaves_the_model_stock():
    model = build("vit")
    with pytest.raises(ValueError, match="`r` has 3 entries but the encoder has 4 layers"):
        apply_turbo(model, TurboConfig(r=[1, 2, 3]))
    assert not is_turbo_applied(model)
    assert type(model).__name__ == "ViTModel"


def test_bad_settings_fail_at_config_creation():
    with pytest.raises(ValueError, match="`mode`"):
        apply_turbo(build("vit"), mode="fast")
    with pytest.raises(ValueError, match="not both"):
        apply_turbo(build("vit"), TurboConfig(r=2), r=3)


def test_flash_attention_with_proportional_attention_is_refused():
    model = build("vit")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="proportional_attention"):
        apply_turbo(model, r=2)
    apply_turbo(model, r=2, proportional_attention=False)
    assert get_turbo_config(model).proportional_attention is False


def test_padding_mask_is_refused_while_merging():
    model = apply_turbo(build("vit"), r=2)
    mask = torch.ones(2, 65)
    mask[:, -1] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(**inputs("vit"), attention_mask=mask)


def test_apply_twice_replaces_the_settings_and_remove_needs_a_patch():
    model = build("dinov2")
    apply_turbo(model, r=2)
    apply_turbo(model, r=5)
    assert get_turbo_config(model).r == 5
    with torch.no_grad():
        assert model(**inputs("dinov2")).last_hidden_state.shape[1] == 65 - 4 * 5
    remove_turbo(model)
    assert type(model).__name__ == "Dinov2Model"
    with pytest.raises(ValueError, match="no Turbo patch"):
        remove_turbo(model)


def test_language_model_settings_are_refused_without_a_language_model():
    with pytest.raises(ValueError, match="llm_layers.*ViTModel has none"):
        apply_turbo(build("vit"), TurboConfig(r=2, llm_layers=[1], llm_keep=[4]))


# ---------------------------------------------------------------------------------------- settings are checked


@pytest.mark.parametrize(
    "call",
    [
        lambda model: TurboConfig(rr=16),
        lambda model: apply_turbo(model, {"r": 4, "moed": "tome"}),
        lambda model: apply_turbo(model, rr=8),
        lambda model: turbo(model, rr=8).__enter__(),
        lambda model: TurboConfig.from_dict({"r": 4, "alhpa": 0.1}),
    ],
    ids=["config", "apply-dict", "apply-kwargs", "turbo", "from_dict"],
)
def test_unknown_settings_name_the_closest_valid_one(call):
    model = build("vit")
    with pytest.raises(ValueError, match=r"unknown setting `(rr|moed|alhpa)`\. Did you mean `(r|mode|alpha)`\?"):
        call(model)
    assert not is_turbo_applied(model)


def test_unknown_settings_are_refused_when_loading(tmp_path):
    build("vit").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown setting `rr`. Did you mean `r`"):
        TurboViTModel.from_pretrained(tmp_path, turbo_config={"rr": 16})
    for wrong in ("16", 16):
        with pytest.raises(ValueError, match="`turbo_config` must be a TurboConfig, a dict of its settings or None"):
            TurboViTModel.from_pretrained(tmp_path, turbo_config=wrong)


@pytest.mark.parametrize(
    "field, value, message",
    [("mode", "bogus", "`mode` must be one of"), ("r", -3, "`r` must be a non-negative integer"),
     ("reduction", "avg", "`reduction` must be one of")],
)
def test_a_config_changed_after_creation_is_checked_at_apply(field, value, message):
    config = TurboConfig(r=4)
    setattr(config, field, value)
    model = build("vit")
    with pytest.raises(ValueError, match=message):
        apply_turbo(model, config)
    assert not is_turbo_applied(model)


# ---------------------------------------------------------------------------------------- patching is atomic


def test_a_refused_reapply_keeps_the_previous_patch():
    model = build("dinov2")
    apply_turbo(model, r=4)
    with torch.no_grad():
        before = model(**inputs("dinov2")).last_hidden_state
    with pytest.raises(ValueError, match="`r` has 2 entries but the encoder has 4 layers"):
        apply_turbo(model, r=[1, 2])
    assert get_turbo_config(model).r == 4
    with torch.no_grad():
        assert torch.equal(model(**inputs("dinov2")).last_hidden_state, before)


def test_a_failure_while_swapping_restores_the_previous_state(monkeypatch):
    model = build("vit")
    apply_turbo(model, r=2)
    import turbo_hf.modeling.patching as patching

    calls = []

    def broken_register(module):  # fails once, in the middle of the swaps
        calls.append(module)
        if len(calls) == 3:
            raise RuntimeError("boom")

    monkeypatch.setattr(patching, "_register_outputs", broken_register)
    with pytest.raises(RuntimeError, match="boom"):
        apply_turbo(model, r=3)
    monkeypatch.undo()
    assert get_turbo_config(model).r == 2
    assert sum(type(module).__name__ == "TurboViTLayer" for module in model.modules()) == 4
    remove_turbo(model)
    assert type(model) is ViTModel and sum(type(module) is ViTLayer for module in model.modules()) == 4


# ------------------------------------------------------------------------------------------- turbo() restores


def test_turbo_block_restores_a_previous_patch():
    model = apply_turbo(build("vit"), r=3)
    with turbo(model, r=1):
        assert get_turbo_config(model).r == 1
    assert get_turbo_config(model).r == 3


def test_turbo_block_restores_a_turbo_class():
    config = TurboViTConfig(**vit_config().to_dict(), turbo_config=TurboConfig(r=3))
    model = TurboViTModel(config).eval()
    with torch.no_grad():
        before = model(**inputs("vit")).last_hidden_state
        with turbo(model, r=1):
            assert model(**inputs("vit")).last_hidden_state.shape[1] == 65 - 4
        after = model(**inputs("vit")).last_hidden_state
    assert type(model) is TurboViTModel and get_turbo_config(model).r == 3
    assert torch.equal(before, after)


def test_turbo_block_leaves_a_stock_model_stock_even_on_error():
    model = build("vit")
    with pytest.raises(KeyError):
        with turbo(model, r=1):
            raise KeyError("inside")
    assert type(model) is ViTModel and not is_turbo_applied(model)


# -------------------------------------------------------------------------------------------- nested patches


def test_patching_a_tower_inside_a_patched_model_is_refused():
    clip = apply_turbo(build("clip"), r=2)
    with pytest.raises(ValueError, match="part of an enclosing model"):
        apply_turbo(clip.vision_model, r=1)
    remove_turbo(clip)
    assert type(clip).__name__ == "CLIPModel"


def test_patching_a_model_around_a_patched_tower_is_refused():
    clip = build("clip")
    apply_turbo(clip.vision_model, r=1)
    with pytest.raises(ValueError, match="`vision_model` of this CLIPModel is patched by Turbo on its own"):
        apply_turbo(clip, r=2)
    remove_turbo(clip.vision_model)
    apply_turbo(clip, r=2)
    remove_turbo(clip)


# ---------------------------------------------------------------------------------------------------- pickling


@pytest.mark.parametrize("kind", ["patched", "turbo-class"])
def test_patched_models_pickle_and_give_identical_outputs(kind, tmp_path):
    if kind == "patched":
        model = apply_turbo(build("dinov2"), r=4)
    else:
        model = TurboDinov2Model(TurboDinov2Config(**dinov2_config().to_dict(), turbo_config={"r": 4})).eval()
    # before any forward: like the stock classes, a model holds unpicklable output-capturing hooks after one
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    copies = [loaded, copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    with torch.no_grad():
        reference = model(**inputs("dinov2"), output_hidden_states=True)
        for other in copies:
            out = other(**inputs("dinov2"), output_hidden_states=True)
            assert torch.equal(out.last_hidden_state, reference.last_hidden_state)
            assert len(out.hidden_states) == len(reference.hidden_states)
    remove_turbo(loaded)
    assert type(loaded).__name__ == "Dinov2Model"


def test_a_pickled_patch_loads_in_a_fresh_process(tmp_path):
    torch.save(apply_turbo(build("vit"), r=4), tmp_path / "model.pt")
    torch.save(inputs("vit"), tmp_path / "inputs.pt")
    script = f"""
import torch
model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)
out = model(**torch.load({str(tmp_path / 'inputs.pt')!r}), output_hidden_states=True)
print(type(model).__name__, out.last_hidden_state.shape[1], len(out.hidden_states))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["TurboViTModel", str(65 - 4 * 4), "5"]


# ----------------------------------------------------------------------------------------- clamped requests


@pytest.mark.parametrize(
    "settings, size, expected",
    [
        (dict(r=200), 32, "`r=200` asks for [200, 200, 200, 200] tokens removed per layer from 65 tokens"),
        (dict(flops_ratio=0.01), 32, "`flops_ratio=0.01` cannot be met for 65 tokens"),
        (dict(r=16), 8, "`r=16` asks for [16, 16, 16, 16] tokens removed per layer from 5 tokens"),
    ],
)
def test_a_request_that_cannot_be_met_warns_once(settings, size, expected, caplog):
    with caplog.at_level("WARNING", logger="turbo_hf.modeling.turbo_encoder"), torch.no_grad():
        model = apply_turbo(build("vit"), **settings)
        for _ in range(2):
            model(**inputs("vit", image_size=size), interpolate_pos_encoding=True)
    warnings = [record.getMessage() for record in caplog.records if record.name == "turbo_hf.modeling.turbo_encoder"]
    assert sum(expected in message for message in warnings) == 1
    assert all(message.startswith("Turbo: ") and "tokens remain" in message for message in warnings)


def test_a_request_that_can_be_met_does_not_warn(caplog):
    with caplog.at_level("WARNING", logger="turbo_hf.modeling.turbo_encoder"), torch.no_grad():
        apply_turbo(build("vit"), r=4)(**inputs("vit"))
    assert not [record for record in caplog.records if record.name == "turbo_hf.modeling.turbo_encoder"]


# ----------------------------------------------------------------------------------------------- subclasses


def test_subclasses_of_stock_classes_are_refused_clearly():
    class MyViT(ViTModel):
        pass

    class MyDinov2Classifier(Dinov2ForImageClassification):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    torch.manual_seed(0)
    for model, stock in [(MyViT(vit_config()), "ViTModel"), (MyDinov2Classifier(dinov2_config()), "Dinov2ForImageClassification")]:
        with pytest.raises(ValueError, match=f"subclasses the stock {stock}.*Patch a plain {stock}"):
            apply_turbo(model, r=2)
        assert not is_turbo_applied(model)


def test_subclasses_of_turbo_classes_work():
    class MyTurboViT(TurboViTModel):
        pass

    model = MyTurboViT(TurboViTConfig(**vit_config().to_dict(), turbo_config={"r": 2})).eval()
    with torch.no_grad():
        assert model(**inputs("vit")).last_hidden_state.shape[1] == 65 - 8
    apply_turbo(model, r=1)
    assert get_turbo_config(model).r == 1


def test_tome_order_is_refused_where_token_order_carries_meaning():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64))
    with pytest.raises(ValueError, match="token_order='tome'.*BertModel needs them in their original order"):
        apply_turbo(bert, r=2, mode="tome", token_order="tome")
    assert not is_turbo_applied(bert)
    apply_turbo(bert, r=2, mode="tome")  # ToMe's decisions in spatial order are fine
