"""apply_turbo / remove_turbo: early, clear errors; reapplying; plans."""

import pytest
import torch
from transformers import Dinov2Backbone, GPT2Config, GPT2Model

from tiny_models import build, dinov2_config, inputs
from turbo_hf import TurboConfig, apply_turbo, get_turbo_config, is_turbo_applied, remove_turbo, supported_classes


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
