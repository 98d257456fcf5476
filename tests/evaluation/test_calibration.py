"""calibrate: picks the candidate most faithful to the stock model, and leaves the model stock."""

import pytest
import torch

from turbo_hf.testing.tiny_models import build, inputs
from turbo_hf import TurboConfig, apply_turbo, calibrate, get_turbo_config, is_turbo_applied, turbo
from turbo_hf.evaluation.calibration import default_candidates, extract_features, fidelity, pooled_features


def test_calibration_ranks_candidates_by_fidelity_and_restores_the_model():
    model = build("dinov2")
    pixels = inputs("dinov2", batch=6)["pixel_values"]
    reference = extract_features(model, pixels, batch_size=4)
    candidates = [{"mode": "tome"}, {"mode": "random"}, {"mode": "turbo", "alpha": 0.1}]
    result = calibrate(model, pixels, r=6, candidates=candidates, base=TurboConfig(min_tokens=10), batch_size=4)

    assert not is_turbo_applied(model)
    assert [row["fidelity"] for row in result.table] == sorted((row["fidelity"] for row in result.table), reverse=True)
    assert result.config.r == 6 and result.config.min_tokens == 10
    # the reported fidelity is what the chosen setting really gives
    with turbo(model, result.config):
        assert fidelity(reference, extract_features(model, pixels, batch_size=4)) == pytest.approx(result.fidelity)
    assert result.fidelity == max(row["fidelity"] for row in result.table) < 1


def test_calibration_needs_one_budget_and_works_on_two_tower_models():
    model = build("clip")
    pixels = inputs("clip")["pixel_values"]
    with pytest.raises(ValueError, match="exactly one of `r` and `flops_ratio`"):
        calibrate(model, pixels)
    result = calibrate(model, pixels, flops_ratio=0.7, candidates=[{"mode": "tome"}], show_progress=False)
    assert result.config.flops_ratio == 0.7 and result.config.mode == "tome"


def test_default_candidates_include_tome_and_late_semantic_starts():
    candidates = default_candidates(12)
    assert candidates[0] == {"mode": "tome"}
    assert {c.get("semantic_start_layer") for c in candidates[1:]} == {0, 6}
    assert all(TurboConfig(r=1, **c) for c in candidates)


def test_pooled_features_join_summary_and_mean_of_restored_tokens():
    model = build("dinov2")
    with torch.no_grad(), turbo(model, r=8):
        out = model(**inputs("dinov2"))
    features = pooled_features(out)
    assert features.shape == (2, 64)
    torch.testing.assert_close(features[:, :32], out.pooler_output)
    sizes = out.token_sizes
    weighted = (out.last_hidden_state * sizes).sum(1) / sizes.sum(1)
    torch.testing.assert_close(features[:, 32:], weighted, atol=1e-5, rtol=1e-5)


def test_calibrating_a_patched_model_compares_with_stock_and_keeps_the_patch():
    model = build("dinov2")
    pixels = inputs("dinov2", batch=4)["pixel_values"]
    stock_result = calibrate(model, pixels, r=6, candidates=[{"mode": "tome"}], show_progress=False)
    apply_turbo(model, TurboConfig(r=3, mode="random"))
    result = calibrate(model, pixels, r=6, candidates=[{"mode": "tome"}], show_progress=False)
    assert result.fidelity == pytest.approx(stock_result.fidelity)
    assert is_turbo_applied(model) and get_turbo_config(model).mode == "random"
