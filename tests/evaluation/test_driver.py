"""The evaluation machinery (settings, sharding, measurement, usage errors) and the scripts' argument handling;
the scripts end to end, every family in one and two processes: tests/scripts/test_eval_scripts.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from turbo_hf.evaluation.driver import (
    UsageError,
    build_settings,
    count_flops,
    load_data,
    measure_settings,
    parse_modes,
    settings_from_args,
    shard_batches,
)
from turbo_hf.testing.eval_assets import write_checkpoint, write_dataset

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
pytestmark = pytest.mark.usefixtures("one_thread")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The tiny local dataset and tiny ViT / CLIP checkpoints (`turbo_hf.testing.eval_assets`)."""
    root = write_dataset(tmp_path_factory.mktemp("eval_assets"))
    for name in ("vit", "clip"):
        write_checkpoint(name, root)
    return root


# -------------------------------------------------------------------------------------------- pieces


def test_modes_settings_and_sharding():
    assert parse_modes("none,TOME,turbo,stock") == ["stock", "tome", "turbo"]
    with pytest.raises(UsageError, match="Unknown mode 'fast'"):
        parse_modes("tome,fast")
    settings = build_settings(["turbo", "tome", "stock"], [0, 4, 8], {"alpha": 0.1, "min_tokens": 3})
    assert [s.name for s in settings] == ["stock", "tome r=4", "tome r=8", "turbo r=4", "turbo r=8"]
    assert settings[-1].config.alpha == 0.1 and settings[-1].config.min_tokens == 3 and settings[0].config is None
    assert shard_batches(7, 2, 0, 2) == [[0, 1], [4, 5]] and shard_batches(7, 2, 1, 2) == [[2, 3], [6]]
    assert sorted(i for rank in range(3) for b in shard_batches(10, 3, rank, 3) for i in b) == list(range(10))


def test_settings_from_a_preset_and_overrides():
    class Args:
        modes, r, turbo_preset, batch_size = ["stock", "turbo"], None, "blip-caption-base", 4

    settings = settings_from_args(Args)
    assert [s.name for s in settings] == ["stock", "turbo r=30"]
    assert settings[1].config.alpha == 150.0 and settings[1].config.alpha_scale == "raw"
    Args.r = [0, 10]
    assert [s.name for s in settings_from_args(Args)] == ["stock", "turbo r=10"]
    Args.turbo_preset, Args.r = None, None
    with pytest.raises(UsageError, match="Give --r"):
        settings_from_args(Args)


def test_measurement_counts_flops_and_times_every_setting():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    flops = {}
    for attn in ("eager", "sdpa"):
        model = ViTModel(ViTConfig(**TOWER, image_size=32, patch_size=4, attn_implementation=attn)).eval()
        flops[attn] = count_flops(lambda: model(pixel_values=pixels))
    assert flops["sdpa"] == flops["eager"] > 0  # the CPU flash kernel is counted like the eager matmuls
    settings = build_settings(["tome", "turbo"], [0, 8])
    result = measure_settings(model, settings, lambda: model(pixel_values=pixels), 2, "cpu", warmup=1, repeats=2,
                              progress=False)
    assert set(result) == {"stock", "tome r=8", "turbo r=8"}
    assert result["stock"]["speedup"] == 1.0 and len(result["tome r=8"]["latencies_ms"]) == 2
    assert result["tome r=8"]["flops"] < result["stock"]["flops"]
    assert result["stock"]["throughput"] == pytest.approx(2 * 1000 / result["stock"]["median_ms"])
    assert type(model).__name__ == "ViTModel"  # left stock


# ------------------------------------------------------------------------------------------- scripts


def test_bad_arguments_end_with_a_message_and_code_2(assets, tmp_path, capsys):
    module = load_script("eval_classification")
    base = ["--model", str(assets / "vit"), "--dataset", str(assets / "data.jsonl"), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        module.main([*base, "--modes", "none,warp"])
    assert exit_info.value.code == 2 and "Unknown mode 'warp'" in capsys.readouterr().err
    assert module.main([*base, "--r", "4", "--label-column", "category"]) == 2
    assert "no column 'category'" in capsys.readouterr().err
    retrieval = load_script("eval_retrieval")
    assert retrieval.main(["--model", str(assets / "clip"), "--dataset", str(assets / "data.jsonl"), "--r", "4",
                           "--out", str(tmp_path)]) == 2
    assert "no column 'caption'" in capsys.readouterr().err


def test_results_page_is_regenerated_from_the_json(tmp_path):
    bench = tmp_path / "benchmarks"
    shutil.copytree(REPO / "benchmarks", bench)
    for generated in ("README.md", "dinov2_results.png"):
        (bench / generated).unlink(missing_ok=True)
    module = load_script("make_results_page")
    assert module.main(["--bench-dir", str(bench)]) == 0
    page = (bench / "README.md").read_text()
    speed = json.loads((bench / "speed_dinov2.json").read_text())
    tome = next(row for row in speed["rows"] if row["mode"] == "tome" and row["r"] == 16)
    assert (f"| ToMe | 16 | {tome['final_tokens']} | {tome['theoretical_speedup']:.2f}x | "
            f"**{tome['measured_speedup']:.2f}x** | {tome['efficiency']:.0%} |") in page
    probe = json.loads((bench / "quality_dinov2.json").read_text())["probe"]
    r = str(probe["r"][-1])
    turbo, tome = (100 * probe["rows"][key][f"digits r={r}"]["accuracy"] for key in ("turbo-length-0.02", "tome"))
    assert f"digits at {probe['speed_limit'][r]:.2f}x: Turbo (default) {turbo:.1f} %, ToMe {tome:.1f} %" in page
    assert (bench / "dinov2_results.png").stat().st_size > 10_000
    committed = REPO / "benchmarks" / "README.md"
    if committed.exists():
        assert page == committed.read_text(), "benchmarks/README.md is stale: run python scripts/make_results_page.py"
    assert module.main(["--bench-dir", str(tmp_path / "nowhere")]) == 2


def test_meteor_is_optional_and_generated_text_loses_its_prompt(monkeypatch):
    import types

    from turbo_hf.evaluation.driver import decode_generated

    captioning = load_script("eval_captioning")
    offline = types.SimpleNamespace(load=lambda name: (_ for _ in ()).throw(FileNotFoundError("no Hub here")))
    monkeypatch.setitem(sys.modules, "evaluate", offline)
    assert captioning.load_meteor(True) == (None, "FileNotFoundError: no Hub here")
    assert captioning.load_meteor(False)[0] is None
    required = ["--model", "org/model", "--dataset", "org/data"]
    assert captioning.parse_args(required).meteor is False  # opt-in
    assert captioning.parse_args([*required, "--meteor"]).meteor is True
    assert captioning.parse_args([*required, "--no-meteor"]).meteor is False  # the old flag still parses

    class Words:
        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(f"w{i}" for i in row.tolist()) for row in ids]

    inputs = {"input_ids": torch.tensor([[1, 2], [3, 4]])}
    # decoder-only models return the prompt tokens first: they are cut off
    assert decode_generated(Words(), torch.tensor([[1, 2, 5], [3, 4, 6]]), inputs, None) == ["w5", "w6"]
    # BLIP returns its own start token then the prompt text: the prompt is cut from the text
    assert decode_generated(Words(), torch.tensor([[7, 8]]), {}, ["w7"]) == ["w8"]


def test_a_missing_local_model_or_dataset_fails_at_once(tmp_path, monkeypatch, capsys):
    import time

    from turbo_hf.evaluation.driver import load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "data.jsonl").write_text("")
    module = load_script("eval_classification")
    start = time.perf_counter()
    for flag in ("--model", "--dataset"):
        for missing in ("./nothing", "runs/nothing", str(tmp_path / "no" / "where")):
            argv = {"--model": "org/model", "--dataset": "data.jsonl", flag: missing}
            with pytest.raises(SystemExit) as exit_info:
                module.main([part for pair in argv.items() for part in pair])
            assert exit_info.value.code == 2
            assert f"argument {flag}: the local path {missing!r} does not exist" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--model: the local path 'runs/nothing' does not exist"):
        load_model("runs/nothing", ["AutoModel"])
    for missing in ("runs/nothing", "./nothing.jsonl", "~/no-such-turbo-hf-data"):
        with pytest.raises(UsageError, match=f"--dataset: the local file or folder '{missing}' does not exist"):
            load_data(missing)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("script", ["eval_captioning", "eval_classification", "eval_retrieval", "eval_vqa"])
def test_help_says_how_max_samples_picks_rows(script, capsys):
    with pytest.raises(SystemExit):
        load_script(script).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-samples N evaluate N rows: spread over the classes" in text and "--sample-seed" in text
