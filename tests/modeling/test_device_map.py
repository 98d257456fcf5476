"""Scale-out: the Turbo classes load with a `device_map` through Accelerate (layers offloaded to disk here, on CPU)
and compute what the model loaded whole computes; `apply_turbo` / `remove_turbo` work on a dispatched model.

Accelerate keeps a module whole when its class NAME is in the model's `_no_split_modules`: the stock classes
name their stock layers there, so every Turbo subclass of such a layer must be named too."""

import pytest
import torch
import transformers
from accelerate import infer_auto_device_map
from accelerate.utils import compute_module_sizes

import turbo_hf
from turbo_hf import TurboConfig, apply_turbo, remove_turbo
from turbo_hf.testing.family_tester import BY_NAME, CASES

pytestmark = pytest.mark.usefixtures("one_thread")

TURBO_CASES = [case for case in CASES if case.turbo_class]


def _turbo_folder(case, tmp_path):
    """A saved Turbo folder of the case (from its stock checkpoint), the model loaded whole, and its inputs."""
    merging = TurboConfig(**case.merging)
    case.build().save_pretrained(tmp_path / "stock")
    turbo_class = getattr(turbo_hf.modeling, case.turbo_class)
    whole = turbo_class.from_pretrained(tmp_path / "stock", turbo_config=merging).eval()
    whole.save_pretrained(tmp_path / "turbo")
    return turbo_class, whole, case.inputs(whole, turbo=merging)


@pytest.mark.parametrize("case", TURBO_CASES, ids=repr)
def test_every_turbo_layer_class_is_named_in_no_split_modules(case):
    stock = case.build()
    stock_names = set(stock._no_split_modules)
    turbo_class = getattr(turbo_hf.modeling, case.turbo_class)
    model = apply_turbo(turbo_class(stock.config).eval(), TurboConfig(**case.merging))
    subclasses = {
        type(module).__name__
        for module in model.modules()
        if type(module).__name__.startswith("Turbo") and {base.__name__ for base in type(module).__mro__} & stock_names
    }
    assert subclasses, "the case has no Turbo subclass of a no-split stock class: the check would be empty"
    assert subclasses <= set(model._no_split_modules), sorted(subclasses - set(model._no_split_modules))


@pytest.mark.parametrize("name", ["vit-cls", "llava", "blip2"])
def test_offloaded_to_disk_equals_the_model_loaded_whole(name, tmp_path):
    case = BY_NAME[name]
    turbo_class, whole, inputs = _turbo_folder(case, tmp_path)
    expected = case.read(whole, inputs)
    # what `device_map="auto"` computes with half the model's size in memory: the rest goes to disk
    device_map = infer_auto_device_map(
        whole, max_memory={"cpu": compute_module_sizes(whole)[""] // 2}, no_split_module_classes=whole._no_split_modules
    )
    assert set(device_map.values()) == {"cpu", "disk"}
    layers = [name for name, module in whole.named_modules()
              if type(module).__name__ in whole._no_split_modules and "Turbo" in type(module).__name__]
    assert layers and not any(key.startswith(layer + ".") for key in device_map for layer in layers)
    offloaded = turbo_class.from_pretrained(
        tmp_path / "turbo", device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    assert offloaded.hf_device_map == device_map
    assert torch.equal(case.read(offloaded, inputs), expected)


def test_apply_turbo_and_remove_turbo_on_a_dispatched_stock_model(tmp_path):
    """Accelerate's hook calls the forward it saved at dispatch: the class swap must reach it both ways."""
    case = BY_NAME["vit-cls"]
    merging = TurboConfig(**case.merging)
    stock = case.build()
    stock.save_pretrained(tmp_path)
    inputs = case.inputs(stock, turbo=merging)
    stock_rows = case.read(stock, inputs)
    expected = case.read(apply_turbo(case.build(), merging), inputs)
    device_map = {"vit.embeddings": "cpu", "vit.layers.0": "cpu", "vit.layers.1": "disk", "vit.layers.2": "disk",
                  "vit.layers.3": "cpu", "vit.layernorm": "cpu", "classifier": "cpu"}
    model = transformers.ViTForImageClassification.from_pretrained(
        tmp_path, device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    apply_turbo(model, merging)
    assert torch.equal(case.read(model, inputs), expected)
    remove_turbo(model)
    assert torch.equal(case.read(model, inputs), stock_rows)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_turbo_decoder_layers_are_named_in_no_split_modules(family):
    from turbo_hf.testing import tiny_models

    names = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}
    turbo_class = getattr(turbo_hf.modeling, f"Turbo{names[family]}ForConditionalGeneration")
    model = apply_turbo(turbo_class(getattr(tiny_models, f"{family}_config")()), llm_layers=[2], llm_keep=[0.5])
    layers = {type(module).__name__ for module in model.modules() if type(module).__name__.endswith("DecoderLayer")}
    assert layers and all(name.startswith("Turbo") for name in layers)
    assert layers <= set(model._no_split_modules), sorted(layers - set(model._no_split_modules))
