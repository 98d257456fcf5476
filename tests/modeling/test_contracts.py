"""What every Turbo class owes the stock API: reentrant gradient checkpointing, the stock output arguments
(`return_dict=False`, `output_hidden_states`, `output_attentions`), the stock weight initialisation from a config,
and LLaVA settings refused where they are applied."""

import pytest
import torch
import transformers
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

import turbo_hf
from turbo_hf import TurboConfig, apply_turbo
from turbo_hf.modeling import modeling_turbo_llava
from turbo_hf.modeling.compat import image_features_of
from turbo_hf.testing import tiny_models
from turbo_hf.testing.family_tester import BY_NAME, CASES


pytestmark = pytest.mark.usefixtures("one_thread")


def llava_inputs(model, turbo=None):
    return BY_NAME["llava"].inputs(model, turbo=turbo)


# ------------------------------------------------------------------------------ reentrant gradient checkpointing


@pytest.mark.parametrize("name", ["blip-caption", "blip2", "instructblip", "llava"])
def test_reentrant_checkpointing_trains_with_the_same_gradients(name):
    case = BY_NAME[name]
    turbo = TurboConfig(**case.merging)
    grads = []
    for checkpointing in (False, True):
        model = case.build()
        inputs = case.inputs(model, turbo=turbo)
        apply_turbo(model, turbo).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("vision" in key and "layers.0." in key for key in grads[0])
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ output arguments


def assert_stock_prefix(stock, ours, path="output"):
    """`ours` holds `stock` (tensors equal) in the same places; a Turbo output may only append fields."""
    if isinstance(stock, Cache):
        assert type(ours) is type(stock), path
        stock = [tensor for layer in stock.layers for tensor in (layer.keys, layer.values)]
        ours = [tensor for layer in ours.layers for tensor in (layer.keys, layer.values)]
    if isinstance(stock, ModelOutput):
        assert isinstance(ours, ModelOutput), path
        stock, ours = stock.to_tuple(), ours.to_tuple()
    if isinstance(stock, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) >= len(stock), f"{path}: {len(ours)} < {len(stock)}"
        for index, (expected, got) in enumerate(zip(stock, ours)):
            assert_stock_prefix(expected, got, f"{path}[{index}]")
        extra = ours[len(stock):]
        assert len(extra) <= 3 and all(torch.is_tensor(item) for item in extra), f"{path}: extra {len(extra)}"
    elif torch.is_tensor(stock):
        assert torch.is_tensor(ours) and torch.equal(stock, ours), path
    else:
        assert stock == ours, path


# LLaVA's vision outputs differ from stock by design (`unlike_stock`); its own tests below check them when asked
OUTPUT_CASES = [case for case in CASES if not case.unlike_stock]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=repr)
def test_tuple_outputs_with_hidden_states_and_attentions_match_the_stock_tuple(case):
    model = case.build("eager")
    inputs = case.inputs(model)
    args = dict(return_dict=False, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        stock = model(**inputs, **args)
        apply_turbo(model, TurboConfig(r=0))
        ours = model(**inputs, **args)
    assert isinstance(stock, tuple) and isinstance(ours, tuple)
    assert_stock_prefix(stock, ours)


@pytest.mark.parametrize("name", ["dinov2-cls", "clip-cls", "siglip-cls"])
def test_classification_heads_return_the_stock_tuple(name):
    model, inputs = tiny_models.build(name), tiny_models.inputs(name)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        stock = model(**inputs, labels=labels, return_dict=False)
        apply_turbo(model, TurboConfig(r=0))
        ours = model(**inputs, labels=labels, return_dict=False)
        apply_turbo(model, TurboConfig(r=6))
        merged = model(**inputs, labels=labels, return_dict=False)
    assert isinstance(ours, tuple) and len(ours) == len(stock) == len(merged) == 2
    assert all(torch.equal(a, b) for a, b in zip(stock, ours))


def llava_models(model_class=LlavaForConditionalGeneration):
    torch.manual_seed(0)
    return model_class(tiny_models.set_attention(tiny_models.llava_config(), "eager")).eval()


def test_llava_image_features_return_hidden_states_and_attentions_when_asked():
    model = llava_models()
    pixel_values = llava_inputs(model)["pixel_values"]
    args = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        stock = model.get_image_features(pixel_values, **args)
        apply_turbo(model, TurboConfig(r=0))
        ours = model.get_image_features(pixel_values, **args)
        plain = model.get_image_features(pixel_values)
        apply_turbo(model, TurboConfig(r=8))
        merged = model.get_image_features(pixel_values, **args)
    assert len(ours.hidden_states) == len(stock.hidden_states) == 4 and len(ours.attentions) == 3
    assert all(torch.equal(a, b) for a, b in zip(stock.hidden_states, ours.hidden_states))
    assert all(torch.equal(a, b) for a, b in zip(stock.attentions, ours.attentions))
    assert all(torch.equal(a, b) for a, b in zip(stock.pooler_output, ours.pooler_output))
    assert plain.hidden_states is None and plain.attentions is None
    # merging: the feature layer (-2) is the last Turbo layer, the last layer still runs for `hidden_states`
    assert [h.shape[1] for h in merged.hidden_states] == [65, 57, 49, 49]
    assert [a.shape[-1] for a in merged.attentions] == [65, 57, 49]
    assert torch.equal(merged.hidden_states[-2], merged.last_hidden_state)


@pytest.mark.parametrize("model_class", [LlavaForConditionalGeneration, LlavaModel])
def test_llava_forward_passes_the_output_arguments_to_the_vision_tower(model_class):
    model = llava_models(model_class)
    inputs = llava_inputs(model)
    with torch.no_grad():
        stock = model(**inputs, output_hidden_states=True, output_attentions=True)
        apply_turbo(model, TurboConfig(r=0))
        ours = model(**inputs, output_hidden_states=True, output_attentions=True)
    image_stock, image_ours = image_features_of(stock), image_features_of(ours)
    for field in ("hidden_states", "attentions"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(stock, field), getattr(ours, field)))
    if hasattr(stock, "image_outputs"):  # Transformers 5.24 returns the vision outputs
        assert all(torch.equal(a, b) for a, b in zip(stock.image_outputs.hidden_states, ours.image_outputs.hidden_states))
        assert all(torch.equal(a, b) for a, b in zip(stock.image_outputs.attentions, ours.image_outputs.attentions))
    assert torch.equal(torch.cat(list(image_stock)), torch.cat(list(image_ours)))


# ----------------------------------------------------------------------------------- initialisation from configs


def turbo_config_of(config, config_class, settings: dict):
    values = config.to_dict()
    values.pop("model_type", None)
    return config_class(**values, turbo_config=TurboConfig(**settings))


INIT_CASES = [case for case in CASES if case.turbo_class]


@pytest.mark.parametrize("case", INIT_CASES, ids=lambda case: case.turbo_class)
def test_a_turbo_class_built_from_a_config_initialises_like_the_stock_class(case):
    config = case.make_config()
    stock_class, turbo_class = getattr(transformers, case.stock_class), getattr(turbo_hf.modeling, case.turbo_class)
    torch.manual_seed(0)
    stock = stock_class(config).state_dict()
    turbo_config = turbo_config_of(config, turbo_class.config_class, case.merging)
    torch.manual_seed(0)
    ours = turbo_class(turbo_config).state_dict()
    assert list(ours) == list(stock)
    different = [key for key in stock if not torch.equal(stock[key], ours[key])]
    assert different == []


# ------------------------------------------------------------------------------------- LLaVA feature layers


def test_llava_list_feature_layer_is_refused_when_turbo_is_applied():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(tiny_models.llava_config(vision_feature_layer=[-2, -1]))
    with pytest.raises(ValueError, match=r"vision_feature_layer=\[-2, -1\]` concatenates"):
        apply_turbo(model, TurboConfig(r=4))
    assert not turbo_hf.is_turbo_applied(model)  # refused before anything changed
    assert type(model) is LlavaForConditionalGeneration
    apply_turbo(model, TurboConfig(r=0))  # nothing merges: a list is fine
    with pytest.raises(ValueError, match="concatenates"):
        stock = tiny_models.llava_config(vision_feature_layer=[-2, -1]).to_dict()
        modeling_turbo_llava.TurboLlavaConfig(**{**stock, "model_type": None}, turbo_config=TurboConfig(r=4))
