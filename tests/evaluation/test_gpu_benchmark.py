"""The GPU script's dry run on CPU: the kernel probe, the additive bias against `turbo_flex`, the speed table."""

import json

import pytest
import torch

from turbo_hf.evaluation.gpu_benchmark import attention_inputs, sdpa_kernels

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kernel_probe_reports_each_backend_alone():
    q, k, v, bias = attention_inputs(1, 2, 5, 8, "cpu", torch.float32)
    report = sdpa_kernels(q, k, v, bias)
    assert set(report) == {"flash", "efficient", "cudnn", "math"}
    assert report["math"] == {"no bias": True, "log(size) bias": True}
    # CUDA-only kernels are refused on CPU with the reason, not silently reported as running
    assert isinstance(report["cudnn"]["no bias"], str) and report["cudnn"]["no bias"]


def test_dry_run_on_cpu(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_gpu.py"
    spec = importlib.util.spec_from_file_location("benchmark_gpu", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--device", "cpu", "--dry-run", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_bf16.json").read_text())
    settings = [(row["model"], row["setting"]) for row in saved["rows"]]
    assert settings == [(model, s) for model in ("vit", "dinov2")
                        for s in ("stock", "turbo r=2 (sdpa)", "turbo r=2 (turbo_flex)")]
    attention = saved["metadata"]["attention"]
    assert set(attention) == {"sdpa, no bias", "sdpa, additive bias", "turbo_flex, score_mod bias"}
    assert next(iter(attention.values()))["max_abs_diff_flex_vs_sdpa"] < 2e-2  # bf16
    assert all(row["median"] > 0 and row["flop_limit"] >= 1 for row in saved["rows"])
