"""The peer benchmark's own path (turbo-hf rows on a 2-layer stand-in), the ToMe schedule it reports for the peers,
and the refusals when the peers' environment is missing (peers are not turbo-hf dependencies)."""

import sys

import pytest
import torch
from transformers import ViTConfig, ViTModel

from turbo_hf import TurboConfig, apply_turbo, turbo_plan
from turbo_hf.evaluation import peer_worker
from turbo_hf.evaluation.peer_benchmark import PeerProcess, _tome_plan, run_peer_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")


def test_turbo_rows_on_a_small_model():
    result = run_peer_benchmark([2], batch_size=2, rounds=1, rounds_single=1, warmup=0, threads=1, peers=False,
                                small=True, memory=False)
    rows = {row["setting"]: row for row in result["rows"]}
    assert list(rows) == ["stock", "turbo-hf tome r=2", "turbo-hf turbo r=2"]
    assert rows["stock"]["logits_cosine"] == pytest.approx(1.0) and rows["stock"]["max_abs_logit_diff"] == 0
    assert rows["stock"]["speedup_b1_vs_own_stock"] == 1 and rows["stock"]["final_tokens"] == result["tokens"]
    for name in ("turbo-hf tome r=2", "turbo-hf turbo r=2"):
        assert rows[name]["final_tokens"] == result["tokens"] - 2 * 2 and rows[name]["flops_fraction"] < 1
        assert rows[name]["max_abs_logit_diff"] > 0  # merged: not the stock logits
        assert rows[name]["images_per_s"] > 0 and len(rows[name]["batch_times_ms"]) == 1


def test_tome_schedule_of_the_peers_matches_turbo_plan():
    config = ViTConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=16)
    model = apply_turbo(ViTModel(config).eval(), TurboConfig(r=16))
    ours = turbo_plan(model, 197)
    cost = model.turbo_runtime.cost
    peers = _tome_plan(16, 197, cost, 12, observed=11)
    assert peers["schedule"] == ours["schedule"] and peers["flops_fraction"] == pytest.approx(ours["flops_fraction"])
    assert _tome_plan(16, 197, cost, 12, observed=5) is None  # a count the rule does not explain is not reported


def test_peak_forward_memory_is_measured():
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               image_size=32, patch_size=8)).eval()
    assert peer_worker.peak_forward_rss_mib(model, torch.randn(1, 3, 32, 32)) >= 0
    assert peer_worker.tokens_out(model) is None


def test_missing_peers_are_refused_with_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install torch==2.13.0"):
        PeerProcess(str(tmp_path / "python"), tmp_path, tmp_path / "inputs.pt", 1, ["stock"])
    with pytest.raises(RuntimeError, match=r"lacks pruna .*pip install"):
        PeerProcess(sys.executable, tmp_path, tmp_path / "inputs.pt", 1, ["pruna:8"])  # our venvs have no pruna
    with pytest.raises(SystemExit, match="The peer package `pruna` is not installed"):
        peer_worker.require("pruna", peer_worker.PRUNA_INSTALL)
