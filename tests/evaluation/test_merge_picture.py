"""`visualize_merges`, the function behind `turbo-hf visualize`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from turbo_hf import is_turbo_applied
from turbo_hf.evaluation.driver import UsageError
from turbo_hf.evaluation.merge_picture import visualize_merges

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("picture_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                       patch_size=4)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_visualize_merges_draws_one_colour_per_merged_token(vit_folder, tmp_path):
    image = tmp_path / "photo.png"
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(image)
    info = visualize_merges(str(vit_folder), str(image), 6, tmp_path / "out" / "merges.png", mode="tome")
    assert info["tokens_in"] == 65 and info["tokens_out"] == 65 - 2 * 6 and info["grid"] == [8, 8]
    assert 1 <= info["merged_groups"] <= 12
    picture = Image.open(info["path"])
    assert picture.width > 2 * 256 and picture.height >= 256 + 20  # original + merges, at least 256 px, a title
    halves = np.asarray(picture.convert("RGB"))
    assert not np.array_equal(halves[28:284, 8:264], halves[28:284, 272:528])  # the merged half is coloured
    assert (halves[:20] < 128).any()  # the title line: "ToMe r=6: 65 -> 53 tokens"
    with pytest.raises(UsageError, match="mode"):
        visualize_merges(str(vit_folder), str(image), 6, tmp_path / "x.png", mode="none")
    with pytest.raises(UsageError, match="does not exist"):
        visualize_merges(str(vit_folder), str(tmp_path / "missing.png"), 6, tmp_path / "x.png")
    assert not is_turbo_applied(ViTModel.from_pretrained(vit_folder))
