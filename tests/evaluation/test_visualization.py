import numpy as np
import pytest
import torch

from turbo_hf.evaluation.visualization import denormalize, draw_merges, merge_groups, side_by_side


def test_merge_groups_drop_cls_and_check_the_grid():
    source = torch.tensor([0, 1, 1, 2, 3])
    assert merge_groups(source, (2, 2)).tolist() == [[1, 1], [2, 3]]
    with pytest.raises(ValueError, match="grid 3x3"):
        merge_groups(source, (3, 3))


def test_draw_merges_colours_only_merged_groups():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    groups = np.array([[0, 0], [1, 2]])
    picture = np.asarray(draw_merges(image, groups, opacity=1.0))
    assert picture.shape == (4, 4, 3)
    # the bottom-right patch (alone) keeps its pixel away from borders
    assert picture[3, 3].tolist() == [100, 100, 100]
    # borders between different tokens are white
    assert picture[2, 0].tolist() == [255, 255, 255]
    # the merged top patches share one colour away from borders
    assert picture[0, 0].tolist() == picture[0, 3].tolist() != [100, 100, 100]


def test_denormalize_inverts_normalisation_and_sheets_stack():
    image = torch.rand(3, 6, 6)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    normalised = (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    restored = denormalize(normalised, mean, std)
    assert np.abs(restored.astype(float) / 255 - image.permute(1, 2, 0).numpy()).max() < 1 / 255 + 1e-6
    tile = draw_merges(restored, np.array([[0, 1], [2, 3]]))
    sheet = side_by_side([(tile, tile), (tile, tile)], gap=2)
    assert sheet.size == (6 + 6 + 6, 6 + 6 + 6)
