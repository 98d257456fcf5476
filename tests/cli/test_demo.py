"""The main job on a tiny local DINOv2 (the real one is covered by tests/testing/test_real_weights.py)."""

import json

import pytest
from transformers import BitImageProcessor

from turbo_hf.testing.tiny_models import build
from turbo_hf import TurboConfig
from turbo_hf.cli.demo import SPREAD_LIMIT, format_report, run_demo, timing_warnings


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2")
    build("dinov2").save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_demo_reports_medians_with_their_spread_and_threads(tiny_dinov2, tmp_path):
    report = run_demo(TurboConfig(r=4), model_path=tiny_dinov2, image_size=32, batch_size=2, repeats=3,
                      out_dir=tmp_path)
    for name in ("stock_timing", "turbo_timing"):
        timing = report[name]
        assert timing["min"] <= timing["median"] <= timing["max"]
        assert timing["spread"] == pytest.approx((timing["max"] - timing["min"]) / timing["median"])
    assert report["speedup"] == pytest.approx(report["stock_timing"]["median"] / report["turbo_timing"]["median"])
    assert (report["tokens_in"], report["tokens_out"]) == (65, 65 - 4 * 4)
    assert report["warnings"] == timing_warnings(report)
    text = format_report(report)
    assert f"{report['machine']['threads']} threads" in text and "min " in text and "max " in text
    assert json.loads((tmp_path / "demo.json").read_text())["turbo_timing"] == report["turbo_timing"]


def _report(stock_spread=0.0, turbo_spread=0.0, load=0.0, speedup=1.5, limit=1.66):
    timing = lambda spread: {"median": 1.0, "min": 1.0, "max": 1.0 + spread, "spread": spread}  # noqa: E731
    return {"stock_timing": timing(stock_spread), "turbo_timing": timing(turbo_spread), "speedup": speedup,
            "flops_speed_limit": limit, "machine": {"load_average": load, "cpus": 2, "threads": 2}}


def test_unreliable_timings_are_flagged():
    assert timing_warnings(_report()) == []
    assert "spread 30% between rounds" in timing_warnings(_report(turbo_spread=0.3))[0]
    assert SPREAD_LIMIT < 0.3
    assert "load average 1.8 on 2 CPUs" in timing_warnings(_report(load=1.8))[0]
    assert timing_warnings(_report(load=0.8)) == []
    assert "exceeds the FLOP limit" in timing_warnings(_report(speedup=2.0))[0]
    assert "Warning: " in format_report({**_minimal_rows(), "warnings": ["x"]})


def _minimal_rows():
    report = _report()
    report.update(model="m", turbo_config={"r": 1}, tokens_in=5, tokens_out=3, schedule=[2], batch_size=1, repeats=1,
                  cls_cosine=1.0, feature_cosine=1.0, picture="p.png")
    return report
