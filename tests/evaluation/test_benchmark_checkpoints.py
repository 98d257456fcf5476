"""The `--checkpoint PATH` path of each in-LLM benchmark script on a tiny stock checkpoint saved with
`save_pretrained`, as a user's would be: its sizes, depth and token ids differ from the script's built-in random
model (all in bfloat16). Each script's `main(argv)` runs end to end at the smallest settings; the test
checks that the model it measured holds the saved weights, that its JSON and markdown name the checkpoint, and
that the image-token counts and reduced cache lengths it reports are the ones the checkpoint's config gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, Qwen2VLForConditionalGeneration

from turbo_hf.evaluation.llm_reduction_benchmark import shared_variant
from turbo_hf.modeling.llm_token_reduction import keep_count
from turbo_hf import is_turbo_applied
from turbo_hf.testing.tiny_models import llava_config, llava_next_config, qwen2_vl_config

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SMALLEST = ["--repeats", "1", "--warmup", "0", "--new-tokens", "1", "--layer", "1"]


def load_script(name: str):
    """The module `scripts/<name>.py` (the scripts are files, not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(model_class, config, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """A random stock model of `config` in `dtype`, saved to `folder` with `save_pretrained`; returned."""
    torch.manual_seed(1)
    model = model_class(config).to(dtype).eval()
    model.save_pretrained(folder)
    return model


def run(name: str, builder: str, argv: list[str], monkeypatch) -> tuple[dict, torch.nn.Module]:
    """`scripts/<name>.py`'s `main(argv)`, and the model its `builder` function returned."""
    module = load_script(name)
    built, real = [], getattr(module, builder)

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(module, builder, spy)
    payload = module.main(argv)
    assert len(built) == 1
    return payload, built[0]


def assert_loaded(model: torch.nn.Module, saved: torch.nn.Module) -> None:
    """The measured model is the saved checkpoint: same class, dtype and every weight equal."""
    assert type(model) is type(saved) and not is_turbo_applied(model)
    expected, actual = saved.state_dict(), model.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


def written(out: Path, stem: str, folder: Path) -> dict:
    """The script's JSON (returned) and markdown in `out`, both naming the checkpoint folder."""
    page = (out / f"{stem}.md").read_text()
    assert f"- model: {folder}" in page
    return json.loads((out / f"{stem}.json").read_text())


def expected_cache(prompt: int, rows: list[int], layers: int, turbo: dict | None) -> list[int]:
    """Cached tokens per decoder layer of a left-padded batch of `prompt` tokens whose rows hold `rows` image tokens
    each, when the images are reduced before `turbo["llm_layers"]` to `turbo["llm_keep"]`: the row that removes
    fewest sets the batch's length."""
    steps = dict(zip((turbo or {}).get("llm_layers") or [], (turbo or {}).get("llm_keep") or []))
    cache, removed = [], 0
    for layer in range(layers):
        if layer in steps:
            removed = min(count - keep_count(steps[layer], count) for count in rows)
        cache.append(prompt - removed)
    return cache


def test_qwen2_vl_checkpoint(tmp_path, monkeypatch):
    config = qwen2_vl_config(layers=3)  # patch 2 px (the random model: 14), 3 layers, vocabulary 120
    config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id = 5, 6, 7, 8
    folder, out = tmp_path / "qwen2-vl", tmp_path / "out"
    saved = save(Qwen2VLForConditionalGeneration, config, folder, torch.bfloat16)
    argv = ["--checkpoint", str(folder), "--resolutions", "12", "--batches", "2", "--keep", "0.5", *SMALLEST,
            "--out", str(out)]
    payload, model = run("benchmark_vlm_llm", "build_qwen2_vl", argv, monkeypatch)
    assert_loaded(model, saved)
    assert written(out, "qwen2_vl_llm", folder) == json.loads(json.dumps(payload, default=str))
    assert payload["metadata"]["settings"]["checkpoint"] == str(folder)
    vision = config.vision_config
    tokens = (12 // vision.patch_size) ** 2 // vision.spatial_merge_size**2  # 9 image tokens per 12 px image
    layers = config.text_config.num_hidden_layers
    [block] = payload["results"]
    assert (block["resolution"], block["batch"]) == (12, 2)
    assert list(block["settings"]) == ["stock", "K=1 keep 0.5 (merge)", "K=1 keep 0.5 (prune)"]
    prompt = block["settings"]["stock"]["prompt_length"]
    for entry in block["settings"].values():
        assert entry["image_tokens_to_llm"] == tokens and entry["prompt_length"] == prompt
        assert entry["cache_tokens_per_layer"] == expected_cache(prompt, [tokens] * 2, layers, entry["turbo_config"])
    assert block["settings"]["K=1 keep 0.5 (merge)"]["kv_cache_ratio"] < 1
    assert [row["image_tokens"] for row in payload["costs"]] == [tokens]  # the checkpoint's shapes, not the 7B's


def test_llava_next_checkpoint(tmp_path, monkeypatch):
    config = llava_next_config()  # 32 px crops, patch 4 (random model: 224, 14), vocabulary 120
    config.image_token_id, config.text_config.num_hidden_layers = 9, 3
    folder, out = tmp_path / "llava-next", tmp_path / "out"
    saved = save(LlavaNextForConditionalGeneration, config, folder, torch.bfloat16)
    argv = ["--checkpoint", str(folder), "--keep", "0.5", *SMALLEST, "--out", str(out)]
    payload, model = run("benchmark_llava_next_llm", "build_llava_next", argv, monkeypatch)
    assert_loaded(model, saved)
    assert written(out, "llava_next_llm", folder)["metadata"]["settings"]["checkpoint"] == str(folder)
    crop, side = config.vision_config.image_size, config.vision_config.image_size // config.vision_config.patch_size
    layers = config.text_config.num_hidden_layers

    def count(height: int, width: int) -> int:  # a pinpoint-sized image: base crop, unpadded tiles, newlines
        rows, cols = height // crop * side, width // crop * side
        return side * side + rows * cols + rows

    small, large = (crop, 2 * crop), (2 * crop, 2 * crop)
    labels = [f"{h}x{w}" for h, w in (small, large)]
    assert [block["resolution"] for block in payload["results"]] == [*labels, " + ".join(labels)]
    for block, sizes in zip(payload["results"], [[small], [large], [small, large]]):
        counts = [count(*size) for size in sizes]
        stock, reduced = block["settings"]["stock"], block["settings"]["K=1 keep 0.5"]
        assert stock["image_tokens_to_llm"] == reduced["image_tokens_to_llm"] == " / ".join(map(str, counts))
        prompt = stock["prompt_length"]
        assert stock["cache_tokens_per_layer"] == [prompt] * layers
        assert reduced["cache_tokens_per_layer"] == expected_cache(prompt, counts, layers, reduced["turbo_config"])
        assert reduced["cache_tokens_per_layer"][-1] < prompt


def test_llava_checkpoint(tmp_path, monkeypatch):
    config = llava_config()  # 32 px, patch 4 (random model: 336, 14), vocabulary 120
    config.image_token_id, config.text_config.num_hidden_layers = 9, 4
    folder, out = tmp_path / "llava", tmp_path / "out"
    saved = save(LlavaForConditionalGeneration, config, folder, torch.bfloat16)
    argv = ["--checkpoint", str(folder), "--batches", "1", *SMALLEST, "--out", str(out)]
    payload, model = run("benchmark_llava_llm", "build_llava", argv, monkeypatch)
    assert_loaded(model, saved)
    meta = written(out, "llava_llm", folder)["meta"]["settings"]
    layers = config.text_config.num_hidden_layers
    assert meta["checkpoint"] == meta["model"] == str(folder) and meta["text_layers"] == layers
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2  # the "default" strategy drops [CLS]
    depth = vision.num_hidden_layers + 1 + config.vision_feature_layer  # tower layers up to the feature layer
    [block] = payload["batches"]
    prompt = block["settings"]["stock"]["prompt_length"]
    assert block["settings"]["stock"]["image_tokens_to_llm"] == tokens
    kinds = set()
    for entry in block["settings"].values():
        turbo = entry["turbo_config"] or {}
        merged = tokens - (turbo.get("r") or 0) * depth  # the tower's constant r on each layer it runs
        assert entry["image_tokens_to_llm"] == merged and entry["prompt_length"] == prompt - (tokens - merged)
        assert entry["cache_tokens_per_layer"] == expected_cache(entry["prompt_length"], [merged], layers, turbo)
        kinds.add((bool(turbo.get("r")), len(turbo.get("llm_layers") or [])))
    assert kinds == {(False, 0), (False, 1), (False, 2), (True, 0), (True, 1)}  # every kind of setting ran


def test_setting_variants_share_the_weights_and_leave_the_model_stock():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(llava_config()).to(torch.bfloat16).eval()
    variant = shared_variant(model, {"llm_layers": [1], "llm_keep": [8]})
    assert is_turbo_applied(variant) and not is_turbo_applied(model)
    pairs = list(zip(model.state_dict().values(), variant.state_dict().values()))
    assert all(a.data_ptr() == b.data_ptr() and a.dtype == b.dtype == torch.bfloat16 for a, b in pairs)
