"""Turbo classes load stock checkpoints, save self-contained Hub folders and load back, with and without
the package (remote code in a subprocess where `turbo_hf` cannot be imported)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

import turbo_hf
from tiny_models import build, inputs
from turbo_hf import TurboConfig
from turbo_hf.hub_export import remote_code_files

# tiny family name -> (public Turbo class, the Auto class that loads it)
CASES = {
    "vit-cls": (turbo_hf.TurboViTForImageClassification, "AutoModelForImageClassification"),
    "dinov2": (turbo_hf.TurboDinov2Model, "AutoModel"),
    "dinov2-cls": (turbo_hf.TurboDinov2ForImageClassification, "AutoModelForImageClassification"),
    "clip": (turbo_hf.TurboCLIPModel, "AutoModel"),
    "clip-vision": (turbo_hf.TurboCLIPVisionModel, "AutoModel"),
    "siglip": (turbo_hf.TurboSiglipModel, "AutoModel"),
    "siglip-vision": (turbo_hf.TurboSiglipVisionModel, "AutoModel"),
}


def image_output(model, pixel_values):
    if hasattr(model, "get_image_features"):
        return model.get_image_features(pixel_values=pixel_values).pooler_output
    out = model(pixel_values=pixel_values)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def run_remote(folder, auto_class, tensors_path):
    """Load the folder with trust_remote_code in a fresh interpreter where turbo_hf is not importable."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None  # any `import turbo_hf` now fails
        import torch, transformers
        pixel_values, expected = torch.load({str(tensors_path)!r})
        model = getattr(transformers, {auto_class!r}).from_pretrained({str(folder)!r}, trust_remote_code=True)
        with torch.no_grad():
            if hasattr(model, "get_image_features"):
                got = model.get_image_features(pixel_values=pixel_values).pooler_output
            else:
                out = model(pixel_values=pixel_values)
                got = out.logits if hasattr(out, "logits") else out.last_hidden_state
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        print("REMOTE", type(model).__name__, torch.equal(got, expected))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_stock_checkpoint_to_turbo_folder_and_back(name, tmp_path):
    turbo_class, auto_class = CASES[name]
    stock = build(name)
    stock.save_pretrained(tmp_path / "stock")
    pixel_values = inputs(name)["pixel_values"]
    with torch.no_grad():
        reference = image_output(stock, pixel_values)

    # a stock checkpoint loads into the Turbo class without missing or unexpected keys; r=0 is the stock model
    same, info = turbo_class.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.equal(image_output(same.eval(), pixel_values), reference)

    model = turbo_class.from_pretrained(tmp_path / "stock", turbo_config=TurboConfig(r=6)).eval()
    with torch.no_grad():
        merged = image_output(model, pixel_values)
    assert not torch.equal(merged, reference)

    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"].startswith("turbo_") and config["turbo_config"]["r"] == 6
    assert config["auto_map"]["AutoConfig"].endswith("Config")
    assert config["auto_map"][auto_class] == f"{type(model).__module__.split('.')[-1]}.{turbo_class.__name__}"
    assert {p.name for p in remote_code_files(sys.modules[turbo_class.__module__].__file__)} <= {
        p.name for p in folder.iterdir()
    }
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "| `r` | `6` |" in card

    # with the package: the Auto class gives the Turbo class and the same outputs
    loaded = getattr(transformers, auto_class).from_pretrained(folder).eval()
    assert type(loaded) is turbo_class
    with torch.no_grad():
        assert torch.equal(image_output(loaded, pixel_values), merged)

    # without the package: remote code gives the same outputs
    torch.save((pixel_values, merged), tmp_path / "tensors.pt")
    result = run_remote(folder, auto_class, tmp_path / "tensors.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"REMOTE {turbo_class.__name__} True" in result.stdout


def test_turbo_folder_without_remote_code_or_package_is_refused(tmp_path):
    build("dinov2").save_pretrained(tmp_path / "stock")
    turbo_hf.TurboDinov2Model.from_pretrained(tmp_path / "stock", turbo_config={"r": 3}).save_pretrained(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=False)
        except ValueError as error:
            print("REFUSED", "trust_remote_code" in str(error))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "REFUSED True" in result.stdout, result.stderr[-3000:]


def test_patched_stock_model_saves_a_stock_checkpoint_with_a_warning(tmp_path, caplog):
    model = turbo_hf.apply_turbo(build("vit-cls"), r=4)
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path)
    assert "does not keep the Turbo settings" in caplog.text
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vit"
