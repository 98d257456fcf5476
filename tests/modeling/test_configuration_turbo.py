"""Tests of `TurboConfig`: defaults, serialisation and validation."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pytest

from turbo_hf.modeling.configuration_turbo import (
    ALPHA_SCALES,
    DEFAULT_ALPHA,
    DEFAULT_ALPHA_SCALE,
    MODES,
    REDUCTIONS,
    SCHEDULES,
    TOKEN_ORDERS,
    TurboConfig,
)

FIELDS = (
    "r",
    "flops_ratio",
    "schedule",
    "mode",
    "reduction",
    "alpha",
    "alpha_scale",
    "semantic_start_layer",
    "min_tokens",
    "proportional_attention",
    "restore_output",
    "seed",
    "token_order",
    "text_r",
    "image_keep",
)

NON_DEFAULT = dict(
    r=7,
    schedule="decreasing",
    mode="semantic",
    reduction="prune",
    alpha=0.75,
    alpha_scale="zscore",
    semantic_start_layer=3,
    min_tokens=40,
    proportional_attention=False,
    restore_output=True,
    seed=1234,
    token_order="tome",
    text_r=2,
    image_keep=[1.0, 0.5, 0.25],
)


def _fields(config: TurboConfig) -> dict:
    return {name: getattr(config, name) for name in FIELDS}


def test_defaults():
    config = TurboConfig()
    assert config.model_type == "turbo"
    assert _fields(config) == {
        "r": None,
        "flops_ratio": None,
        "schedule": "constant",
        "mode": "turbo",
        "reduction": "merge",
        "alpha": DEFAULT_ALPHA,
        "alpha_scale": DEFAULT_ALPHA_SCALE,
        "semantic_start_layer": 0,
        "min_tokens": 0,
        "proportional_attention": True,
        "restore_output": False,
        "seed": 0,
        "token_order": "spatial",
        "text_r": None,
        "image_keep": None,
    }
    # the defaults the README's settings table documents (chosen there from the DINOv2 measurements)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"| `alpha` | {DEFAULT_ALPHA} |" in readme and f"| `alpha_scale` | `{DEFAULT_ALPHA_SCALE}` |" in readme
    assert config.removes_tokens is False


def test_choice_constants():
    assert set(MODES) == {"turbo", "tome", "semantic", "random"}
    assert set(REDUCTIONS) == {"merge", "prune"}
    assert set(SCHEDULES) == {"constant", "decreasing"}
    assert set(ALPHA_SCALES) == {"length", "raw", "rank", "zscore"}
    assert TOKEN_ORDERS == ("spatial", "tome")


@pytest.mark.parametrize(
    "kwargs",
    [
        NON_DEFAULT,
        dict(r=[0, 3, 2, 5], mode="random", seed=9),
        dict(flops_ratio=0.5, mode="tome", alpha_scale="rank", alpha=2.0),
        dict(flops_ratio=1, alpha_scale="raw", alpha=0),
        {},
    ],
)
def test_json_round_trip(kwargs):
    config = TurboConfig(**kwargs)
    text = config.to_json_string()
    data = json.loads(text)
    for name in FIELDS:
        assert name in data, name
    assert data["model_type"] == "turbo"
    restored = TurboConfig.from_dict(data)
    assert _fields(restored) == _fields(config)
    assert restored.to_dict()["r"] == config.r
    # And through a plain to_dict as well.
    assert _fields(TurboConfig.from_dict(config.to_dict())) == _fields(config)


@pytest.mark.parametrize("kwargs", [NON_DEFAULT, dict(r=[4, 4, 2, 0]), dict(flops_ratio=0.35)])
def test_save_and_load_pretrained(tmp_path, kwargs):
    config = TurboConfig(**kwargs)
    config.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model_type"] == "turbo"
    loaded = TurboConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, TurboConfig)
    assert _fields(loaded) == _fields(config)


def test_list_r_round_trip_keeps_list():
    config = TurboConfig(r=[1, 0, 2])
    restored = TurboConfig.from_dict(json.loads(config.to_json_string()))
    assert restored.r == [1, 0, 2]
    assert isinstance(restored.r, list)


def test_tuple_r_becomes_list():
    config = TurboConfig(r=(2, 3))
    assert config.r == [2, 3]
    assert isinstance(config.r, list)


def test_non_default_values_are_kept():
    config = TurboConfig(**NON_DEFAULT)
    for name, value in NON_DEFAULT.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        (dict(r=-1), ["r"]),
        (dict(r=1.5), ["r"]),
        (dict(r=True), ["r"]),
        (dict(r="4"), ["r"]),
        (dict(r=[]), ["r"]),
        (dict(r=[2, -1, 3]), ["r"]),
        (dict(r=[2, 1.5]), ["r"]),
        (dict(r=4, flops_ratio=0.5), ["r", "flops_ratio"]),
        (dict(r=[1, 2], flops_ratio=0.5), ["r", "flops_ratio"]),
        (dict(flops_ratio=0), ["flops_ratio"]),
        (dict(flops_ratio=0.0), ["flops_ratio"]),
        (dict(flops_ratio=-0.5), ["flops_ratio"]),
        (dict(flops_ratio=1.5), ["flops_ratio"]),
        (dict(flops_ratio="x"), ["flops_ratio"]),
        (dict(flops_ratio=True), ["flops_ratio"]),
        (dict(mode="bogus"), ["mode"]),
        (dict(mode="ToMe"), ["mode"]),
        (dict(reduction="average"), ["reduction"]),
        (dict(schedule="linear"), ["schedule"]),
        (dict(alpha_scale="softmax"), ["alpha_scale"]),
        (dict(alpha=float("nan")), ["alpha"]),
        (dict(alpha=float("inf")), ["alpha"]),
        (dict(alpha=-0.1), ["alpha"]),
        (dict(alpha="0.1"), ["alpha"]),
        (dict(schedule="decreasing", r=[1, 2]), ["schedule", "r"]),
        (dict(min_tokens=-1), ["min_tokens"]),
        (dict(min_tokens=2.5), ["min_tokens"]),
        (dict(semantic_start_layer=-1), ["semantic_start_layer"]),
        (dict(seed=-3), ["seed"]),
        (dict(proportional_attention="yes"), ["proportional_attention"]),
        (dict(proportional_attention=1), ["proportional_attention"]),
        (dict(restore_output="no"), ["restore_output"]),
        (dict(token_order="ToMe"), ["token_order"]),
        (dict(token_order=None), ["token_order"]),
        (dict(text_r=-1), ["text_r"]),
        (dict(text_r=[]), ["text_r"]),
        (dict(text_r=[1, 0.5]), ["text_r"]),
        (dict(text_r=[1, 2], schedule="decreasing"), ["schedule", "text_r"]),
        (dict(image_keep=0.5), ["image_keep"]),
        (dict(image_keep=[]), ["image_keep"]),
        (dict(image_keep=[0.8, 0.5]), ["image_keep[0]"]),
        (dict(image_keep=[1.0, 0.0]), ["image_keep"]),
        (dict(image_keep=[1.0, 1.5]), ["image_keep"]),
        (dict(image_keep=[1.0, True]), ["image_keep"]),
        (dict(image_keep=[1.0, 0.4, 0.6]), ["image_keep"]),
    ],
)
def test_invalid_inputs_raise(kwargs, names):
    with pytest.raises(ValueError) as info:
        TurboConfig(**kwargs)
    message = str(info.value)
    for name in names:
        assert f"`{name}" in message, (name, message)


def test_text_settings_are_normalised_and_listed_in_settings():
    config = TurboConfig(text_r=(1, 2, 1), image_keep=(1, 0.5, 0.5))
    assert config.text_r == [1, 2, 1] and config.image_keep == [1.0, 0.5, 0.5]
    assert isinstance(config.image_keep[0], float)
    settings = config.settings()
    assert settings["text_r"] == [1, 2, 1] and settings["image_keep"] == [1.0, 0.5, 0.5]
    assert config.removes_tokens is False  # `removes_tokens` is about the vision tokens (`r`)


def test_replace_keeps_the_other_settings_and_validates():
    config = TurboConfig(r=4, mode="tome", min_tokens=10, text_r=2)
    changed = config.replace(r=None, flops_ratio=0.5)
    assert (changed.r, changed.flops_ratio, changed.mode, changed.min_tokens, changed.text_r) == (None, 0.5, "tome", 10, 2)
    assert config.r == 4 and config.flops_ratio is None
    with pytest.raises(ValueError, match="`flops_ratio`"):
        config.replace(flops_ratio=0.5)  # together with r=4
    with pytest.raises(ValueError, match="unknown setting `rr`. Did you mean `r`"):
        config.replace(rr=2)


def test_invalid_values_from_dict_raise():
    with pytest.raises(ValueError, match="`alpha`"):
        TurboConfig.from_dict({"alpha": -1.0})
    with pytest.raises(ValueError, match="`mode`"):
        TurboConfig.from_dict({"mode": "nope"})


def test_valid_edge_values_are_accepted():
    assert TurboConfig(flops_ratio=1.0).flops_ratio == 1.0
    assert TurboConfig(flops_ratio=1).flops_ratio == 1
    assert TurboConfig(alpha=0).alpha == 0
    assert TurboConfig(r=0).r == 0
    assert TurboConfig(r=[0]).r == [0]
    assert TurboConfig(r=3, schedule="decreasing").schedule == "decreasing"
    assert TurboConfig(flops_ratio=0.5, schedule="decreasing").schedule == "decreasing"
    assert math.isclose(TurboConfig(alpha=1e6).alpha, 1e6)
    for mode in MODES:
        assert TurboConfig(mode=mode).mode == mode
    for scale in ALPHA_SCALES:
        assert TurboConfig(alpha_scale=scale).alpha_scale == scale
    for order in TOKEN_ORDERS:
        assert TurboConfig(token_order=order).token_order == order


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, False),
        (dict(r=0), False),
        (dict(r=[0, 0]), False),
        (dict(r=[0, 1]), True),
        (dict(r=3), True),
        (dict(flops_ratio=1.0), False),
        (dict(flops_ratio=0.5), True),
    ],
)
def test_removes_tokens(kwargs, expected):
    assert TurboConfig(**kwargs).removes_tokens is expected


def test_score_settings():
    config = TurboConfig(mode="tome", alpha=0.7, alpha_scale="rank", semantic_start_layer=2, seed=5)
    settings = config.score_settings()
    assert settings == {
        "mode": "tome",
        "alpha": 0.0,
        "alpha_scale": "rank",
        "semantic_start_layer": 2,
        "reduction": "merge",
        "seed": 5,
    }
    turbo = TurboConfig(mode="turbo", alpha=0.7, reduction="prune").score_settings()
    assert turbo["alpha"] == 0.7
    assert isinstance(turbo["alpha"], float)
    assert turbo["reduction"] == "prune"
    assert TurboConfig(alpha=2).score_settings()["alpha"] == 2.0
    assert isinstance(TurboConfig(alpha=2).score_settings()["alpha"], float)


def test_token_order_is_a_setting_and_reaches_every_layer_step():
    from turbo_hf.modeling.turbo_encoder import TurboRuntime

    config = TurboConfig(r=2, mode="tome", token_order="tome")
    assert config.settings()["token_order"] == "tome"
    assert TurboConfig.from_dict(config.to_dict()).token_order == "tome"
    with pytest.raises(ValueError, match="`token_order`"):
        TurboConfig.from_dict({"token_order": "zigzag"})
    runtime = TurboRuntime(config, num_layers=3, cost=None, protect_first=True, summary_query="cls")
    runtime.schedule = lambda num_tokens: [2, 2, 2]
    assert [step.token_order for step in runtime.steps(17)] == ["tome"] * 3
