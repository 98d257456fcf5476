"""`turbo_hf.evaluation.local_paths`: which values are local paths, and a missing one fails at once."""

import pytest

from turbo_hf.evaluation.local_paths import check_local_path, looks_local, missing_local_path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model").mkdir()


@pytest.mark.parametrize("value", ["./model", "../model", "/data/model", "~/model", ".", "..", "runs/2024/model",
                                   "runs/other", "C:\\models\\x", "org/name/extra", "-bad/name"])
def test_local_looking_values(value):
    assert looks_local(value)


@pytest.mark.parametrize("value", ["bert-base-uncased", "facebook/dinov2-small", "org/name.v2", "user_1/model-x"])
def test_hub_ids(value):
    assert not looks_local(value)
    assert not missing_local_path(value)
    assert check_local_path(value, "--model") == value


def test_only_missing_local_paths_fail_and_the_message_names_argument_and_path():
    assert check_local_path("runs/model", "--model") == "runs/model"
    assert not missing_local_path("./runs")
    for value in ("./nothing", "runs/other", "/no/such/turbo-hf/path"):
        with pytest.raises(ValueError, match=f"--dataset: the local path '{value}' does not exist"):
            check_local_path(value, "--dataset")
