"""Evaluation data through `datasets` (`turbo_hf.evaluation.data`): local JSON lines and image folders, row
filters, and `--max-samples` spread over the classes."""

from __future__ import annotations

import collections
import json

import pytest

from turbo_hf.evaluation.data import load_data, require_columns, stratified_indices
from turbo_hf.evaluation.settings import UsageError
from turbo_hf.testing.eval_assets import CLASSES, write_class_folder, write_dataset


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def test_local_data_through_datasets(assets):
    data = load_data(str(assets / "data.jsonl"))
    assert len(data) == 8 and data[0]["image"].size == (40, 40) and data[0]["captions"][0].startswith("an astronaut")
    folder = load_data(str(assets / "folder"))
    assert sorted(folder.features["label"].names) == CLASSES and len(folder) == 8
    assert len(load_data(str(assets / "data.jsonl"), where=["answer_type=number"], max_samples=1)) == 1
    with pytest.raises(UsageError, match="no column 'caption'.*--caption-column"):
        require_columns(data, caption_column="caption")
    with pytest.raises(UsageError, match="no split 'validation'"):
        load_data(str(assets / "data.jsonl"), split="validation")
    with pytest.raises(UsageError, match="does not exist"):
        load_data(str(assets / "missing.jsonl"))


def test_max_samples_of_an_image_folder_covers_every_class(tmp_path):
    folder = str(write_class_folder(tmp_path / "classes", classes=10, per_class=8))
    first = load_data(folder)["label"][:40]
    assert len(set(first)) == 5  # the first 40 rows: half the classes
    data = load_data(folder, max_samples=40)
    counts = collections.Counter(data["label"])
    assert len(data) == 40 and sorted(counts) == list(range(10)) and set(counts.values()) == {4}
    assert data["label"] == sorted(data["label"])  # dataset order
    assert load_data(folder, max_samples=40)["image"][0].tobytes() == data["image"][0].tobytes()  # deterministic
    other = load_data(folder, max_samples=40, seed=1)
    assert collections.Counter(other["label"]) == counts
    assert [image.tobytes() for image in other["image"]] != [image.tobytes() for image in data["image"]]
    uneven = load_data(folder, max_samples=13)
    assert sorted(collections.Counter(uneven["label"]).values()) == [1] * 7 + [2] * 3


def test_max_samples_of_a_labelled_json_lines_file_and_of_unlabelled_data(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"label": i // 4, "text": f"row {i}"}) + "\n" for i in range(12)))
    assert sorted(load_data(str(rows), max_samples=3, label_column="label")["label"]) == [0, 1, 2]
    # an integer column is no ClassLabel: without --label-column (captions, questions) the first rows
    assert load_data(str(rows), max_samples=3)["text"] == ["row 0", "row 1", "row 2"]


def test_stratified_indices_take_turns_over_the_classes():
    labels = ["a"] * 10 + ["b"] * 2 + ["c"] * 3
    chosen = stratified_indices(labels, 7, seed=0)
    assert collections.Counter(labels[i] for i in chosen) == {"a": 3, "b": 2, "c": 2}
    assert chosen == sorted(chosen) == stratified_indices(labels, 7, seed=0)
    assert stratified_indices(labels, 100) == list(range(len(labels)))
    with pytest.raises(UsageError, match="--max-samples"):
        stratified_indices(labels, 0)
