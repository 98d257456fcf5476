"""`turbo-hf export` and the presets in configs/."""

import json

import pytest
import transformers

import turbo_hf
from turbo_hf import TurboConfig
from turbo_hf.cli.main import main
from turbo_hf.cli.export import export_model
from turbo_hf.cli.presets import list_presets, load_preset


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


def test_a_base_of_another_family_is_refused_before_anything_is_written(tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    base = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(base)
    out = tmp_path / "out"
    assert main(["export", "--base", str(base), "--preset", "clip-vit-base-patch16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--base {str(base)!r} is a 'dinov2' checkpoint (Dinov2Model)" in err
    assert "--preset 'clip-vit-base-patch16' builds TurboCLIPModel, a 'clip' model" in err
    assert "presets for it: dinov2-base, dinov2-small" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="'dinov2' checkpoint .* builds TurboLlavaForConditionalGeneration"):
        export_model(base, "llava-1.5-7b", out)
    assert not out.exists()


def test_families_of_model_types_and_classes():
    from turbo_hf.cli.export import class_family, model_family

    assert model_family("turbo_siglip_vision_model") == "siglip" == class_family(turbo_hf.TurboSiglipVisionModel)
    assert model_family("blip-2") == "blip_2" == class_family(turbo_hf.TurboBlip2ForConditionalGeneration)
    assert class_family(turbo_hf.TurboCLIPVisionModel) == "clip" == class_family(transformers.CLIPModel)
