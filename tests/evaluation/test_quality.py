"""The quality benchmark's library part on a tiny DINOv2 and a tiny two-class data set."""

import numpy as np
import torch

from turbo_hf.evaluation.quality import fit_stock_probes, photo_settings, probe_settings
from turbo_hf.evaluation.quality_report import best_against_tome, photo_table, probe_table
from turbo_hf.evaluation.probe import extract
from turbo_hf.testing.tiny_models import build


def _data(model):
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    labels = np.repeat([0, 1], 8)
    pixels = torch.randn(16, 3, size, size, generator=generator) + torch.as_tensor(labels).view(-1, 1, 1, 1) * 2.0
    train, test = np.arange(0, 16, 2), np.arange(1, 16, 2)
    return {"toy": {"x_train": pixels[train], "x_test": pixels[test], "y_train": labels[train], "y_test": labels[test]}}


def test_probe_rows_of_every_setting_with_seed_means_and_paired_counts_against_tome(capsys):
    model = build("dinov2")
    data = _data(model)
    stock = fit_stock_probes(model, data, batch_size=4)
    rows, random_runs = probe_settings(model, data, ["random", "tome", "turbo-paper"], [2], [0, 1], 4, stock, {})
    assert list(rows) == ["stock", "random", "random (mean of 2 seeds)", "tome", "turbo-paper"]
    assert rows["stock"][("toy", 2)]["fidelity_cls"] == 1.0
    assert [run["seed"] for run in random_runs[("toy", 2)]] == [0, 1]
    mean = rows["random (mean of 2 seeds)"][("toy", 2)]
    assert mean["accuracy"] == np.mean([run["accuracy"] for run in random_runs[("toy", 2)]])
    assert rows["tome"][("toy", 2)]["vs_tome"] == {"gains": 0, "losses": 0}
    for setting in ("stock", "turbo-paper"):  # gains - losses is the difference in correct test images
        row, tome = rows[setting][("toy", 2)], rows["tome"][("toy", 2)]
        assert row["vs_tome"]["gains"] - row["vs_tome"]["losses"] == row["correct"] - tome["correct"]
    table = probe_table(rows, ["toy"], [2])
    assert table.splitlines()[0] == "| setting | toy r=2 acc % | [CLS] cos r=2 |" and "| random (mean of 2 seeds) |" in table
    summary = best_against_tome(rows, ["toy"], [2], {"toy": 8}, None)
    assert summary and summary[0].startswith("- toy r=2: best Turbo turbo-paper")


def test_photo_fidelity_rows():
    model = build("dinov2")
    pixels = _data(model)["toy"]["x_test"]
    stock = extract(model, pixels, 4)
    rows = photo_settings(model, pixels, stock, ["tome"], [2], [0], 4, {})
    assert rows["stock"][2] == {"cos_pooler": 1.0, "min_cos_pooler": 1.0}
    cell = rows["tome"][2]
    assert cell["min_cos_pooler"] <= cell["cos_pooler"] <= 1.0 + 1e-6 and len(cell["per_image"]) == 8
    table = photo_table({"r": [2], "rows": rows})
    assert "| tome | " in table and table.splitlines()[0] == "| setting | mean cos r=2 | min cos r=2 |"
