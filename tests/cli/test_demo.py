"""The main job on a tiny local DINOv2 (the real one is covered by tests/testing/test_real_weights.py)."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import BitImageProcessor

from turbo_hf.testing.tiny_models import build
from turbo_hf import TurboConfig
from turbo_hf.cli.demo import format_report, run_demo
from turbo_hf.evaluation.timing import timing_warnings


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2")
    build("dinov2").save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_demo_reports_medians_with_their_spread_and_threads(tiny_dinov2, tmp_path):
    stages = []
    report = run_demo(TurboConfig(r=4), model_path=tiny_dinov2, image_size=32, batch_size=2, repeats=3,
                      out_dir=tmp_path, threads=1, stages=stages.append)
    assert [stage.split()[0] for stage in stages] == ["loading", "timing", "drawing"]
    for name in ("stock_timing", "turbo_timing"):
        timing = report[name]
        assert timing["min"] <= timing["q1"] <= timing["median"] <= timing["q3"] <= timing["max"]
        assert timing["iqr_spread"] == pytest.approx((timing["q3"] - timing["q1"]) / timing["median"])
    stock, turbo = report["stock_timing"], report["turbo_timing"]
    assert report["speedup"] == pytest.approx(stock["median"] / turbo["median"])
    rounds = [a / b for a, b in zip(report["samples"]["stock"], report["samples"]["Turbo"])]
    assert report["round_speedups"]["min"] == min(rounds) and report["round_speedups"]["max"] == max(rounds)
    assert report["machine"]["threads"] == 1 and 0 < report["machine"]["cpu_share"]
    assert (report["tokens_in"], report["tokens_out"]) == (65, 65 - 4 * 4)
    assert report["warnings"] == timing_warnings(
        {"stock": stock, "Turbo": turbo}, report["machine"], {"Turbo": (report["speedup"], report["flops_speed_limit"])})
    text = format_report(report)
    assert "1 thread(s) on" in text and "round by round" in text and "interquartile" in text and "min-max" in text
    assert f"{tiny_dinov2.name} (Dinov2Model)" in text and "65 in -> 49 out" in text
    assert "the most merging can gain" in text  # the FLOP limit in words
    assert "| Turbo | r=4, mode=turbo, alpha=0.02, alpha_scale=length |" in text  # only what matters
    assert json.loads((tmp_path / "demo.json").read_text())["turbo_timing"] == report["turbo_timing"]
    titled = np.asarray(Image.open(tmp_path / "merged_patches.png").convert("L"))
    assert titled[:20].min() < 128  # the title line: "Turbo r=4: 65 -> 49 tokens ..."


def test_tome_mode_says_tome_and_shows_no_alpha(tiny_dinov2, tmp_path):
    report = run_demo(TurboConfig(r=2, mode="tome"), model_path=tiny_dinov2, image_size=32, batch_size=1,
                      repeats=1, out_dir=tmp_path)
    text = format_report(report)
    assert "| ToMe | r=2, mode=tome |" in text and "ToMe, ms per batch" in text
    assert "alpha" not in text and "llm_text_query" not in text and "Turbo" not in text


def test_bad_threads_are_refused(tiny_dinov2, tmp_path):
    with pytest.raises(ValueError, match=r"`threads` \(--threads\) must be a positive integer, got 0"):
        run_demo(TurboConfig(r=2), model_path=tiny_dinov2, threads=0, out_dir=tmp_path)
