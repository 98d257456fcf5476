"""`turbo-hf export` and the presets in configs/."""

import json

import pytest
import transformers

import turbo_hf
from turbo_hf import TurboConfig
from turbo_hf.cli import main
from turbo_hf.presets import list_presets, load_preset


def test_every_preset_is_valid_and_names_a_source():
    names = list_presets()
    assert {"blip-caption-base", "llava-1.5-7b", "dinov2-small", "clip-vit-large-patch14-336"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset["name"] == name
        TurboConfig(**preset["turbo_config"])
        assert "r" in preset["sources"] and preset["license"]
    with pytest.raises(ValueError, match="Unknown preset 'nope'. Known presets: .*dinov2-small"):
        load_preset("nope")


def test_export_writes_a_hub_folder_with_processor_and_card(converted, tmp_path, capsys):
    results = tmp_path / "results.md"
    results.write_text("| r | speed-up |\n|---|---|\n| 3 | 1.1x |\n")
    out = tmp_path / "out"
    args = ["export", "--base", str(converted), "--preset", "dinov2-small", "--out", str(out), "--r", "3"]
    assert main([*args, "--results", str(results)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "turbo_dinov2" and config["turbo_config"]["r"] == 3
    assert (out / "preprocessor_config.json").exists()
    card = (out / "README.md").read_text()
    assert "base_model: facebook/dinov2-small" in card and "license: apache-2.0" in card
    assert "| 3 | 1.1x |" in card and "Where the settings come from" in card
    model = transformers.AutoModel.from_pretrained(out)
    assert type(model) is turbo_hf.TurboDinov2Model and model.turbo_runtime.config.r == 3
