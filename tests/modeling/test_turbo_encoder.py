"""`TurboRuntime`: settings changed on a loaded model after patching are refused with the supported way, not
silently half-applied."""

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from turbo_hf import TurboConfig, TurboDinov2Model, apply_turbo, get_turbo_config, turbo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def loaded(tmp_path):
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(tmp_path)
    return TurboDinov2Model.from_pretrained(tmp_path, turbo_config=TurboConfig(r=2)).eval()


def test_changing_the_settings_of_a_loaded_model_is_refused_until_applied(loaded):
    pixels = torch.randn(1, 3, 56, 56)
    assert loaded(pixel_values=pixels).last_hidden_state.shape[1] == 17 - 2 * 2
    loaded.config.turbo_config.r = 1
    with pytest.raises(RuntimeError, match=r"changed after it was patched \(r 2 -> 1\).*apply_turbo\(model, "):
        loaded(pixel_values=pixels)
    apply_turbo(loaded, loaded.config.turbo_config)  # the supported way: checked, then applied
    assert loaded(pixel_values=pixels).last_hidden_state.shape[1] == 17 - 2 * 1
    get_turbo_config(loaded).r = [1, 0]  # a list changed in place is seen too
    get_turbo_config(loaded).r[1] = 1
    with pytest.raises(RuntimeError, match=r"r 1 -> \(1, 1\)"):
        loaded(pixel_values=pixels)


def test_turbo_block_and_a_new_config_run_as_asked(loaded):
    pixels = torch.randn(1, 3, 56, 56)
    with turbo(loaded, r=0):
        assert loaded(pixel_values=pixels).last_hidden_state.shape[1] == 17
    apply_turbo(loaded, TurboConfig(r=1, mode="tome"))
    assert loaded(pixel_values=pixels).last_hidden_state.shape[1] == 15
