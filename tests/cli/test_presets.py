"""`load_preset`: a bare name from the presets folder, or an explicit path to an existing .json file."""

import json

import pytest

from turbo_hf.cli.presets import list_presets, load_preset

PRESET = {"name": "mine", "base_model": "org/model", "model_class": "TurboViTModel", "turbo_config": {"r": 2}}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A presets folder with one preset, and a JSON file outside it."""
    configs, outside = tmp_path / "configs", tmp_path / "outside"
    configs.mkdir()
    outside.mkdir()
    (configs / "mine.json").write_text(json.dumps(PRESET))
    (configs / "v1.5_b-2.json").write_text(json.dumps({**PRESET, "name": "v1.5_b-2"}))
    (outside / "secret.json").write_text(json.dumps({**PRESET, "name": "secret"}))
    monkeypatch.setenv("TURBO_HF_CONFIGS", str(configs))
    monkeypatch.chdir(tmp_path)
    return configs, outside


def test_bare_names_come_from_the_presets_folder(folders):
    assert list_presets() == ["mine", "v1.5_b-2"]
    assert load_preset("mine")["name"] == "mine"
    assert load_preset("v1.5_b-2")["name"] == "v1.5_b-2"
    with pytest.raises(ValueError, match="Unknown preset 'secret'. Known presets: mine, v1.5_b-2"):
        load_preset("secret")


@pytest.mark.parametrize("name", ["../outside/secret", "../../outside/secret", "sub/mine", "..", ".hidden",
                                  "a..b", "mine\\..\\x", "/etc/passwd", "~/x", ""])
def test_names_cannot_leave_the_presets_folder(folders, name):
    with pytest.raises(ValueError, match="Invalid preset .*give a preset name .*no path separators or '..'"):
        load_preset(name)


def test_an_explicit_json_path_loads_the_file_it_names(folders):
    configs, outside = folders
    assert load_preset(str(outside / "secret.json"))["name"] == "secret"  # absolute, given deliberately
    assert load_preset("outside/secret.json")["name"] == "secret"  # relative to the working directory
    assert load_preset(configs / "mine.json")["name"] == "mine"  # a Path
    with pytest.raises(ValueError, match="Preset file 'outside/missing.json' does not exist"):
        load_preset("outside/missing.json")


def test_a_malformed_preset_file_is_a_clear_error(folders):
    _, outside = folders
    (outside / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable JSON file"):
        load_preset(str(outside / "broken.json"))
    (outside / "partial.json").write_text(json.dumps({"name": "partial"}))
    with pytest.raises(ValueError, match=r"lacks \['base_model', 'model_class', 'turbo_config'\]"):
        load_preset(str(outside / "partial.json"))
