"""The Stable Diffusion benchmark: settings, switching one UNet between them, the measurement rows, the
full-size FLOP count, and the script end to end on a saved tiny pipeline (`--checkpoint`)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from turbo_hf import is_turbo_applied
from turbo_hf.evaluation import diffusion_benchmark as bench
from turbo_hf.testing.tiny_diffusion import TINY_UNET, tiny_pipeline, tiny_unet, unet_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_diffusion.py"


def test_settings_and_refusals():
    rows = bench.settings_for([0.3, 0.5], ["tomesd", "turbo"], {"mode": "tome"})
    assert [row.label for row in rows] == ["stock", "tomesd ratio=0.3", "tomesd ratio=0.5", "turbo ratio=0.3",
                                           "turbo ratio=0.5"]
    assert rows[-1].turbo == {"mode": "tome"} and rows[1].turbo is None
    with pytest.raises(ValueError, match=r"`methods` must be among \['stock', 'tomesd', 'turbo'\], got \['tome'\]"):
        bench.settings_for([0.5], ["tome"])
    with pytest.raises(ValueError, match=r"merge ratios must be in \(0, 0.75\] \(2 x 2 cells\), got \[0.8\]"):
        bench.settings_for([0.8], ["turbo"])
    config = bench.sd15_unet_config(0.25, 1)
    assert config["block_out_channels"] == (64, 160, 320, 320) and config["layers_per_block"] == 1
    assert bench.sd15_unet_config()["block_out_channels"] == (320, 640, 1280, 1280)


def test_use_switches_one_unet_and_tomesd_stays_optional(monkeypatch):
    unet = tiny_unet()
    bench.use(unet, bench.DiffusionSetting("turbo", 0.5, {"mode": "tome"}))
    assert is_turbo_applied(unet) and unet.turbo_runtime.ratio == 0.5
    bench.use(unet, bench.DiffusionSetting("stock"))
    assert not is_turbo_applied(unet)
    monkeypatch.setitem(sys.modules, "tomesd", None)
    with pytest.raises(ImportError, match="the tomesd rows need tomesd .* not a dependency of turbo-hf"):
        bench.use(unet, bench.DiffusionSetting("tomesd", 0.5))


def test_measure_rows_compare_each_setting_with_stock_on_the_same_unet():
    unet, inputs = tiny_unet(), unet_inputs(batch=2)
    settings = bench.settings_for([0.5], ["turbo"])
    rows = bench.measure(unet, settings, lambda: unet(**inputs).sample, bench.latent_difference, repeats=2, warmup=0)
    stock, turbo = rows
    assert [row["setting"] for row in rows] == ["stock", "turbo ratio=0.5"] and not is_turbo_applied(unet)
    assert stock["latent_max_abs"] == 0 and stock["speedup"] == 1 and turbo["latent_max_abs"] > 0
    assert turbo["speedup"] == pytest.approx(stock["median_s"] / turbo["median_s"])
    assert len(turbo["seconds"]) == 2 and turbo["min_s"] <= turbo["median_s"] <= turbo["max_s"]
    assert turbo["gflops"] != stock["gflops"] and turbo["flops_speed_limit"] == pytest.approx(stock["gflops"] / turbo["gflops"])
    assert stock["peak_rss_mb"] > 0


def test_full_size_flops_are_counted_on_the_meta_device():
    config = {**TINY_UNET, "sample_size": 32}
    flops = bench.full_size_flops(bench.settings_for([0.6], ["turbo"]), config)
    assert flops["stock"] > flops["turbo ratio=0.6"] > 0


def test_psnr_and_image_difference():
    image = torch.rand(1, 3, 8, 8)
    assert math.isinf(bench.psnr(image, image))
    assert bench.psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)) == pytest.approx(20.0)
    assert bench.image_difference(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5))["pixel_mean_abs_255"] == 127.5


def test_the_script_on_a_saved_pipeline(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "sd")
    spec = importlib.util.spec_from_file_location("benchmark_diffusion", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.main(["--checkpoint", str(tmp_path / "sd"), "--methods", "turbo", "--ratios", "0.5", "--steps", "1",
                          "--rounds", "1", "--warmup", "0", "--no-sd15-flops", "--out", str(tmp_path), "--name", "sd"])
    rows = json.loads((tmp_path / "sd.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["stock", "turbo ratio=0.5"] == [row["setting"] for row in result["rows"]]
    assert rows[0]["psnr_db"] is None or math.isinf(rows[0]["psnr_db"])
    assert 0 < rows[1]["pixel_mean_abs_255"] and "PSNR dB" in (tmp_path / "sd.md").read_text()
