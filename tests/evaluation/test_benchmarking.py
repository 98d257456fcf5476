"""`run_bench`, the function behind `turbo-hf bench`."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

from turbo_hf import TurboConfig, apply_turbo, get_turbo_config
from turbo_hf.evaluation.benchmarking import bench_target, run_bench
from turbo_hf.evaluation.driver import UsageError

TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, busy machine every op then waits for
    the other thread: run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit() -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(ViTConfig(**TOWER, image_size=32, patch_size=4)).eval()


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_vit")
    tiny_vit().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_run_bench_on_a_model_object_restores_it(tmp_path):
    model = apply_turbo(tiny_vit(), TurboConfig(r=2))
    result = run_bench(model, r_values=[0, 8], batch_sizes=[1, 2], modes="tome,turbo", repeats=2, warmup=1,
                       device="cpu", out_dir=tmp_path, progress=False)
    names = [(row["batch_size"], row["name"]) for row in result["rows"]]
    assert names == [(b, n) for b in (1, 2) for n in ("stock", "tome r=8", "turbo r=8")]
    for row in result["rows"]:
        speed = row["speed"]
        assert len(speed["latencies_ms"]) == 2 and speed["median_ms"] == pytest.approx(statistics.median(speed["latencies_ms"]), abs=1e-3)
        assert speed["throughput"] == pytest.approx(row["batch_size"] * 1000 / speed["median_ms"])
    flops = {(row["batch_size"], row["name"]): row["speed"]["flops"] for row in result["rows"]}
    assert all(flops[(b, "tome r=8")] < flops[(b, "stock")] for b in (1, 2))
    assert flops[(2, "stock")] == 2 * flops[(1, "stock")]
    stock, tome8 = result["rows"][0], result["rows"][1]
    assert stock["speed"]["speedup"] == 1.0 and stock["plan"]["flops_speed_limit"] == 1.0
    assert tome8["plan"]["token_counts"] == [65, 57, 49] and tome8["plan"]["flops_speed_limit"] > 1
    assert tome8["speed"]["flops"] < stock["speed"]["flops"]
    assert result["target"] == "forward" and result["image_size"] == 32
    assert get_turbo_config(model).r == 2  # the caller's patch is back
    written = json.loads((tmp_path / "bench.json").read_text())
    assert len(written["rows"]) == 6 and (tmp_path / "bench.png").stat().st_size > 5000
    assert "| 2 | turbo r=8 | 49 |" in (tmp_path / "bench.md").read_text()


def test_run_bench_from_a_folder_with_a_preset_and_another_size(vit_folder, tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"name": "tiny", "base_model": "x", "model_class": "TurboViTModel",
                                  "turbo_config": {"r": 3, "mode": "turbo", "alpha": 0.3, "min_tokens": 30}}))
    result = run_bench(str(vit_folder), r_values=[0, 16], batch_sizes=[2], modes=["turbo"], image_size=48,
                       repeats=1, warmup=0, preset=str(preset), flops=False, progress=False)
    turbo_row = result["rows"][1]
    assert turbo_row["turbo_config"]["alpha"] == 0.3 and turbo_row["turbo_config"]["r"] == 16
    assert turbo_row["plan"]["token_counts"][0] == 145 and turbo_row["plan"]["final_tokens"] >= 30  # min_tokens
    assert "flops" not in turbo_row["speed"]


def test_bench_target_and_bad_arguments():
    torch.manual_seed(0)
    text = dict(vocab_size=50, max_position_embeddings=16, **TOWER)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(image_size=32, patch_size=8, **TOWER),
                                projection_dim=8)).eval()
    assert bench_target(clip)[0] == "get_image_features"
    assert bench_target(tiny_vit())[0] == "forward"
    with pytest.raises(UsageError, match="Unknown mode"):
        run_bench(tiny_vit(), modes="fast", progress=False)
    with pytest.raises(UsageError, match="batch_sizes"):
        run_bench(tiny_vit(), batch_sizes=[0], progress=False)
    with pytest.raises(UsageError, match="r_values"):
        run_bench(tiny_vit(), r_values=[-1], progress=False)


def test_a_device_this_torch_lacks_is_refused_before_loading(monkeypatch, tmp_path):
    from turbo_hf.evaluation.devices import available_devices, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices()[:2] == ["auto", "cpu"] and "cuda" not in available_devices()
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match=r"`device` 'cuda' is not available: .*available: auto, cpu"):
        run_bench(str(tmp_path / "never-loaded"), device="cuda", progress=False)
    with pytest.raises(ValueError, match="'npu7' is not a torch device name"):
        resolve_device("npu7")


def test_bench_sizes_images_as_the_processor_does_not_as_config_image_size(tmp_path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from turbo_hf.evaluation.benchmarking import DEFAULT_IMAGE_SIZE, processor_image_size

    model = Dinov2Model(Dinov2Config(**TOWER, image_size=518, patch_size=14))  # DINOv2's config says 518
    assert processor_image_size(tmp_path, model) == DEFAULT_IMAGE_SIZE == 224  # no processor saved
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 196, "width": 196}).save_pretrained(tmp_path)
    assert processor_image_size(tmp_path, model) == 196  # the centre crop
    BitImageProcessor(size={"shortest_edge": 168}, do_center_crop=False).save_pretrained(tmp_path)
    assert processor_image_size(tmp_path, model) == 168
    assert processor_image_size(None, tiny_vit()) == 32  # a config below the cap is kept


def test_bench_times_with_the_given_threads_and_reports_them_with_its_warnings(vit_folder, tmp_path):
    result = run_bench(str(vit_folder), r_values=[0, 4], batch_sizes=[1], modes="tome", repeats=2, flops=False,
                       threads=1, out_dir=tmp_path, progress=False)
    assert result["image_size"] == 32  # the saved processor's size
    assert {row["speed"]["machine"]["threads"] for row in result["rows"]} == {1}
    markdown = (tmp_path / "bench.md").read_text()
    assert "with 1 torch thread(s) on" in markdown and "median (interquartile range)" in markdown
    assert all(f"**Warning**: {warning}" in markdown for warning in result["warnings"])
    noted = {**result, "warnings": ["batch 1: the timed calls got 20% of the CPU time ..."]}
    from turbo_hf.evaluation.benchmarking import bench_markdown

    assert "**Warning**: batch 1: the timed calls got 20%" in bench_markdown(noted)
