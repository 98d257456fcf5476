"""Benchmark output helpers: tables, comma-separated arguments, images, the backbone's token counts."""

import argparse
import json

import numpy as np
import pytest
import torch

from turbo_hf import TurboConfig
from turbo_hf.evaluation.arguments import comma_list, comma_type
from turbo_hf.evaluation.backbone import num_tokens, plan_for, r_for_speed_limit
from turbo_hf.evaluation.images import gray_to_pixels, normalize, resize_center_crop, to_rgb01
from turbo_hf.evaluation.tables import markdown_table, save
from turbo_hf.testing.tiny_models import build


def test_markdown_table_alignment_and_bad_alignment():
    table = markdown_table(["a", "b", "c"], [[1, 2, 3]], align=["r", "l", "r"])
    assert table.splitlines()[1] == "| ---: | :--- | ---: |"
    with pytest.raises(ValueError, match="`align` must give 'l' or 'r' for each of the 2 columns"):
        markdown_table(["a", "b"], [], align=["l"])
    with pytest.raises(ValueError, match="`align`"):
        markdown_table(["a"], [], align=["c"])


def test_save_writes_json_and_markdown(tmp_path):
    json_path, md_path = save(tmp_path / "out", "speed", {"rows": [1]}, "# title\n\n")
    assert json.loads(json_path.read_text()) == {"rows": [1]} and md_path.read_text() == "# title\n"


def test_comma_lists():
    assert comma_list("4, 8,,16", int) == [4, 8, 16]
    assert comma_list("tome , turbo") == ["tome", "turbo"]
    with pytest.raises(ValueError, match="--r takes comma-separated int values, got '4,x'"):
        comma_list("4,x", int, "--r")
    with pytest.raises(ValueError, match="got none"):
        comma_list(" , ", int, "--r")
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=comma_type(float))
    assert parser.parse_args(["--alpha", "0.1,0.2"]).alpha == [0.1, 0.2]
    with pytest.raises(SystemExit):
        parser.parse_args(["--alpha", "a"])


def test_images_to_pixels():
    # a white RGBA pixel with alpha 0 composites to white; uint8 scales to [0, 1]; gray gets three channels
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert np.allclose(to_rgb01(rgba), 1.0)
    assert to_rgb01(np.full((3, 3), 255, dtype=np.uint8)).shape == (3, 3, 3)
    crop = resize_center_crop(np.tile(np.linspace(0, 1, 40, dtype=np.float32)[None, :, None], (20, 1, 3)), 10)
    assert crop.shape == (3, 10, 10) and crop[0, 0, 0] > 0.2 and crop[0, 0, -1] < 0.8  # the centre of the ramp
    pixels = gray_to_pixels(np.full((1, 4, 4), 16.0), 8, scale=16.0)
    torch.testing.assert_close(pixels, normalize(torch.ones(1, 3, 8, 8)))


def test_backbone_tokens_and_r_for_a_speed_limit():
    model = build("dinov2")
    tokens = num_tokens(model, model.config.image_size)
    assert tokens == (model.config.image_size // model.config.patch_size) ** 2 + 1
    limits = {r: 1 / plan_for(model, TurboConfig(r=r), tokens)["flops_fraction"] for r in range(0, 8)}
    target = (limits[3] + limits[4]) / 2 + 0.2 * (limits[4] - limits[3])  # nearer r=4 than r=3
    assert r_for_speed_limit(model, tokens, target, max_r=7) == 4
    assert not hasattr(model, "_turbo_patch") or model._turbo_patch is None
