"""The merge-overhead profile: every component is timed inside the Turbo forward, and the functions come back."""

import pytest
import torch
from transformers import ViTConfig, ViTModel

from turbo_hf import TurboConfig, apply_turbo
from turbo_hf.evaluation.merge_profile import (
    COMPONENTS,
    layer_count_limit,
    profile_merge_overhead,
    timed_components,
)
from turbo_hf.modeling import turbo_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8)


def test_components_are_timed_and_restored():
    originals = {name: getattr(turbo_encoder, name) for names in COMPONENTS.values() for name in names}
    model = apply_turbo(ViTModel(ViTConfig(**CONFIG)).eval(), TurboConfig(r=3))
    pixels = torch.randn(2, 3, 32, 32)
    expected = model(pixel_values=pixels).last_hidden_state
    totals = {name: 0.0 for name in COMPONENTS}
    with timed_components(totals), torch.no_grad():
        output = model(pixel_values=pixels).last_hidden_state
    assert torch.equal(output, expected)  # timing changes nothing
    assert all(totals[name] > 0 for name in COMPONENTS)  # layer 2 merges with the bias: every piece ran
    assert all(getattr(turbo_encoder, name) is function for name, function in originals.items())


def test_profile_reports_shares_of_the_turbo_forward():
    stock = ViTModel(ViTConfig(**CONFIG)).eval()
    turbo = apply_turbo(ViTModel(ViTConfig(**CONFIG)).eval(), TurboConfig(r=3))
    result = profile_merge_overhead(stock, turbo, torch.randn(1, 3, 32, 32), rounds=2, warmup=0)
    shares = [component["share"] for component in result["components"].values()]
    assert all(0 < share < 1 for share in shares)
    assert result["overhead_share"] == pytest.approx(sum(shares)) and result["turbo_ms"] > 0


def test_layer_count_limit_is_one_without_merging_and_above_one_with_it():
    layer = ViTModel(ViTConfig(**CONFIG)).eval().layers[0]
    assert layer_count_limit(layer, [17, 17], batch=1, rounds=1) == 1
    assert layer_count_limit(layer, [400, 4], batch=2, rounds=2) > 1  # 100x fewer tokens cost less
