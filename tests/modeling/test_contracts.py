"""What every Turbo class owes the stock API: reentrant gradient checkpointing, the stock output arguments
(`return_dict=False`, `output_hidden_states`, `output_attentions`), the stock weight initialisation from a config,
and LLaVA settings refused where they are applied."""

import pytest
import torch
from transformers import (
    BertModel,
    Blip2ForImageTextRetrieval,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2ForImageClassification,
    Dinov2Model,
    LlavaForConditionalGeneration,
    LlavaModel,
    SiglipForImageClassification,
    SiglipModel,
    SiglipVisionModel,
    ViTForImageClassification,
    ViTModel,
)
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

import test_modeling_turbo_bert as bert
import test_modeling_turbo_blip as blip
import test_modeling_turbo_blip2 as blip2
import test_modeling_turbo_instructblip as instructblip
import test_modeling_turbo_llava as llava
import turbo_hf.testing.tiny_models as tiny_models
import turbo_hf
from turbo_hf import TurboConfig, apply_turbo
from turbo_hf.modeling import modeling_turbo_blip, modeling_turbo_blip2, modeling_turbo_instructblip, modeling_turbo_llava, llava_token_counts


pytestmark = pytest.mark.usefixtures("one_thread")


def llava_inputs(model, turbo=None):
    generator = torch.Generator().manual_seed(3)
    count = llava_token_counts.image_token_count(model.config, turbo)
    ids = torch.cat([torch.tensor([[2] + [4] * count] * 2), torch.randint(10, 100, (2, 5), generator=generator)], 1)
    return dict(pixel_values=torch.randn(2, 3, 32, 32, generator=generator), input_ids=ids)


# ------------------------------------------------------------------------------ reentrant gradient checkpointing


def caption_case():
    ids = blip.text(2)
    return blip.build("caption"), dict(pixel_values=blip.pixels(2), input_ids=ids, labels=ids), [8, 4, 4, 4]


def blip2_case():
    ids, mask = blip2.prompts([3, 3])
    return blip2.build(), dict(pixel_values=blip2.pixels(2), input_ids=ids, attention_mask=mask, labels=ids), [8, 4]


def instructblip_case():
    inputs = instructblip.make_inputs(2)
    return instructblip.build(), dict(inputs, labels=inputs["input_ids"]), [8, 4]


def llava_case():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(llava.llava_config())
    inputs = llava_inputs(model, TurboConfig(r=8))
    return model, dict(inputs, labels=inputs["input_ids"]), 8


@pytest.mark.parametrize("case", [caption_case, blip2_case, instructblip_case, llava_case], ids=lambda c: c.__name__)
def test_reentrant_checkpointing_trains_with_the_same_gradients(case):
    grads = []
    for checkpointing in (False, True):
        model, inputs, r = case()
        apply_turbo(model, TurboConfig(r=r)).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model(**inputs).loss.backward()
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


def blip_case(name):
    def make():
        model = blip.build(name)
        model.config._attn_implementation = "eager"
        inputs = dict(pixel_values=blip.pixels(2), input_ids=blip.text(2))
        if name == "vqa":
            inputs["decoder_input_ids"] = blip.text(2, 3, 3)
        return model, inputs
    return make


OUTPUT_CASES = {
    **{name: (lambda name=name: (tiny_models.build(name, "eager"), tiny_models.inputs(name))) for name in tiny_models.FAMILIES},
    **{f"blip-{name}": blip_case(name) for name in ("caption", "retrieval", "vqa", "model")},
    "blip2": lambda: (blip2.build(attn="eager"), dict(pixel_values=blip2.pixels(2), input_ids=blip2.prompts([3, 3])[0])),
    "blip2-retrieval": lambda: (blip2.build(Blip2ForImageTextRetrieval, attn="eager"), blip2.itm_inputs(2)),
    "instructblip": lambda: (instructblip.build("eager"), instructblip.make_inputs(2)),
    "bert": lambda: (bert.build("eager"), bert.padded_batch()),
}


@pytest.mark.parametrize("name", list(OUTPUT_CASES))
def test_tuple_outputs_with_hidden_states_and_attentions_match_the_stock_tuple(name):
    model, inputs = OUTPUT_CASES[name]()
    model.eval()
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
    return model_class(llava.llava_config(attn="eager")).eval()


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
    image_stock, image_ours = turbo_hf.modeling.compat.image_features_of(stock), turbo_hf.modeling.compat.image_features_of(ours)
    for field in ("hidden_states", "attentions"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(stock, field), getattr(ours, field)))
    if hasattr(stock, "image_outputs"):  # Transformers 5.24 returns the vision outputs
        assert all(torch.equal(a, b) for a, b in zip(stock.image_outputs.hidden_states, ours.image_outputs.hidden_states))
        assert all(torch.equal(a, b) for a, b in zip(stock.image_outputs.attentions, ours.image_outputs.attentions))
    assert torch.equal(torch.cat(list(image_stock)), torch.cat(list(image_ours)))


# ----------------------------------------------------------------------------------- initialisation from configs


def turbo_config_of(config, config_class):
    values = config.to_dict()
    values.pop("model_type", None)
    return config_class(**values, turbo_config=TurboConfig(r=2))


INIT_CASES = [
    (ViTModel, turbo_hf.TurboViTModel, tiny_models.vit_config, turbo_hf.TurboViTConfig),
    (ViTForImageClassification, turbo_hf.TurboViTForImageClassification, tiny_models.vit_config, turbo_hf.TurboViTConfig),
    (Dinov2Model, turbo_hf.TurboDinov2Model, tiny_models.dinov2_config, turbo_hf.TurboDinov2Config),
    (Dinov2ForImageClassification, turbo_hf.TurboDinov2ForImageClassification, tiny_models.dinov2_config,
     turbo_hf.TurboDinov2Config),
    (CLIPModel, turbo_hf.TurboCLIPModel, tiny_models.clip_config, turbo_hf.TurboCLIPConfig),
    (CLIPVisionModel, turbo_hf.TurboCLIPVisionModel, tiny_models.clip_vision_config, turbo_hf.TurboCLIPVisionConfig),
    (CLIPVisionModelWithProjection, turbo_hf.TurboCLIPVisionModelWithProjection, tiny_models.clip_vision_config,
     turbo_hf.TurboCLIPVisionConfig),
    (CLIPForImageClassification, turbo_hf.TurboCLIPForImageClassification, tiny_models.clip_config,
     turbo_hf.TurboCLIPConfig),
    (SiglipModel, turbo_hf.TurboSiglipModel, tiny_models.siglip_config, turbo_hf.TurboSiglipConfig),
    (SiglipVisionModel, turbo_hf.TurboSiglipVisionModel, tiny_models.siglip_vision_config,
     turbo_hf.TurboSiglipVisionConfig),
    (SiglipForImageClassification, turbo_hf.TurboSiglipForImageClassification, tiny_models.siglip_config,
     turbo_hf.TurboSiglipConfig),
    *[
        (stock, turbo, blip.blip_config, modeling_turbo_blip.TurboBlipConfig)
        for stock, turbo in ((blip.STOCK[name], blip.TURBO[name]) for name in blip.STOCK)
    ],
    (modeling_turbo_blip.BlipVisionModel, modeling_turbo_blip.TurboBlipVisionModel, lambda: blip.blip_config().vision_config,
     modeling_turbo_blip.TurboBlipVisionConfig),
    (modeling_turbo_blip2.Blip2ForConditionalGeneration, modeling_turbo_blip2.TurboBlip2ForConditionalGeneration, blip2.blip2_config,
     modeling_turbo_blip2.TurboBlip2Config),
    (Blip2ForImageTextRetrieval, modeling_turbo_blip2.TurboBlip2ForImageTextRetrieval,
     lambda: blip2.blip2_config(qformer_text=True), modeling_turbo_blip2.TurboBlip2Config),
    (modeling_turbo_instructblip.InstructBlipForConditionalGeneration, modeling_turbo_instructblip.TurboInstructBlipForConditionalGeneration,
     lambda: instructblip.build().config, modeling_turbo_instructblip.TurboInstructBlipConfig),
    (LlavaForConditionalGeneration, modeling_turbo_llava.TurboLlavaForConditionalGeneration, llava.llava_config,
     modeling_turbo_llava.TurboLlavaConfig),
    (LlavaModel, modeling_turbo_llava.TurboLlavaModel, llava.llava_config, modeling_turbo_llava.TurboLlavaConfig),
    (BertModel, turbo_hf.TurboBertModel, bert.bert_config, turbo_hf.TurboBertConfig),
]


@pytest.mark.parametrize("stock_class, turbo_class, make_config, config_class", INIT_CASES,
                         ids=[case[1].__name__ for case in INIT_CASES])
def test_a_turbo_class_built_from_a_config_initialises_like_the_stock_class(
    stock_class, turbo_class, make_config, config_class
):
    config = make_config()
    torch.manual_seed(0)
    stock = stock_class(config).state_dict()
    turbo_config = turbo_config_of(config, config_class)
    torch.manual_seed(0)
    ours = turbo_class(turbo_config).state_dict()
    assert list(ours) == list(stock)
    different = [key for key in stock if not torch.equal(stock[key], ours[key])]
    assert different == []


# ------------------------------------------------------------------------------------- LLaVA feature layers


def test_llava_list_feature_layer_is_refused_when_turbo_is_applied():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(llava.llava_config(vision_feature_layer=[-2, -1]))
    with pytest.raises(ValueError, match=r"vision_feature_layer=\[-2, -1\]` concatenates"):
        apply_turbo(model, TurboConfig(r=4))
    assert not turbo_hf.is_turbo_applied(model)  # refused before anything changed
    assert type(model) is LlavaForConditionalGeneration
    apply_turbo(model, TurboConfig(r=0))  # nothing merges: a list is fine
    with pytest.raises(ValueError, match="concatenates"):
        modeling_turbo_llava.TurboLlavaConfig(**{**llava.llava_config(vision_feature_layer=[-2, -1]).to_dict(),
                                          "model_type": None}, turbo_config=TurboConfig(r=4))
