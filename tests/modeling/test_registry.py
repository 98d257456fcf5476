"""The registry of family adapters: lookup by model and by name, refusals, extra encoders, shared weight conversions."""

import pytest
from torch import nn
from transformers import conversion_mapping
from transformers.conversion_mapping import (
    WeightRenaming,
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)

from turbo_hf import TurboConfig
from turbo_hf import supported_classes  # importing turbo_hf registers every family
from turbo_hf.modeling import modeling_turbo_unet, registry  # the optional UNet family (diffusers is in [dev])
from turbo_hf.modeling.modeling_turbo_blip_text import BLIP_ITM_TEXT_ENCODER
from turbo_hf.modeling.registry import (
    FamilyAdapter,
    ReducibleEncoder,
    adapter_by_name,
    encoder_settings,
    find_adapter,
    register_adapter,
    registered_adapters,
)

FAMILIES = {"bert", "blip", "blip_2", "clip", "clip-text", "dinov2", "instructblip", "llava", "siglip", "siglip-text", "unet",
            "vit"}
FAMILIES |= {"llava_next", "llava_next_video", "llava_onevision", "qwen2_5_vl", "qwen2_vl", "qwen3_vl"}


def bare(cls: type) -> nn.Module:
    """An instance of `cls` without running its constructor (enough for `isinstance` lookups)."""
    return cls.__new__(cls)


def test_every_family_is_registered_once():
    names = [adapter.name for adapter in registered_adapters()]
    assert set(names) == FAMILIES and len(names) == len(set(names))


def test_supported_classes_cover_every_family_and_find_their_adapter():
    classes = {cls for adapter in registered_adapters() for cls in adapter.model_classes}
    assert supported_classes() == sorted(cls.__name__ for cls in classes)
    for adapter in registered_adapters():
        for cls in adapter.model_classes:
            assert find_adapter(bare(cls)) is adapter, cls.__name__


def test_find_adapter_refusal_lists_every_supported_class():
    with pytest.raises(ValueError, match="Turbo does not support Linear. Supported classes: ") as error:
        find_adapter(nn.Linear(2, 2))
    listed = str(error.value).split("Supported classes: ", 1)[1].rstrip(".").split(", ")
    assert listed == supported_classes()
    assert "ViTModel" in listed and "BlipForImageTextRetrieval" in listed and "BertModel" in listed


def test_optional_families_load_for_their_package_and_pipelines_patch_through_their_holder():
    assert registry.OPTIONAL_FAMILIES == {"diffusers": "modeling_turbo_unet"}
    unet = bare(modeling_turbo_unet.UNet2DConditionModel)
    pipeline = type("StableDiffusionPipeline", (), {"__module__": "diffusers.pipelines"})()
    pipeline.unet = unet
    assert registry.held_model(pipeline) is unet and registry.held_model(unet) is unet
    assert find_adapter(unet) is modeling_turbo_unet.UNET_ADAPTER
    holder = object()
    assert registry.held_model(holder) is holder


def test_adapter_by_name():
    vit = adapter_by_name("vit")
    assert vit.name == "vit" and "ViTModel" in {cls.__name__ for cls in vit.model_classes}
    with pytest.raises(ValueError, match=r"No Turbo family called 'vitt'; registered: \[.*'vit'.*\]"):
        adapter_by_name("vitt")


def test_encoder_settings_name_the_blip_itm_text_encoder():
    settings = encoder_settings()
    assert settings == {"text_r": [BLIP_ITM_TEXT_ENCODER], "image_keep": [BLIP_ITM_TEXT_ENCODER]}
    assert adapter_by_name("blip").extra_encoders == (BLIP_ITM_TEXT_ENCODER,)
    assert all(not adapter.extra_encoders for adapter in registered_adapters() if adapter.name != "blip")
    assert not BLIP_ITM_TEXT_ENCODER.requested(TurboConfig(r=4))
    assert BLIP_ITM_TEXT_ENCODER.requested(TurboConfig(image_keep=[1.0, 0.5]))
    view = BLIP_ITM_TEXT_ENCODER.runtime_config(
        TurboConfig(flops_ratio=0.5, min_tokens=40, mode="tome", token_order="tome", text_r=[1, 2])
    )
    assert (view.r, view.flops_ratio, view.min_tokens, view.mode, view.token_order) == ([1, 2], None, 0, "tome", "spatial")


def test_stock_conversions_reach_the_turbo_classes():
    checked = 0
    for adapter in registered_adapters():
        for mapping in adapter.class_maps():
            for stock, turbo in mapping.items():
                conversions = get_checkpoint_conversion_mapping(stock.__name__)
                if conversions is not None:
                    assert repr(get_checkpoint_conversion_mapping(turbo.__name__)) == repr(conversions), turbo.__name__
                    checked += 1
    assert checked >= 5  # ViT, DINOv2, CLIP, SigLIP, LLaVA keep old checkpoint names


class _Stock(nn.Module):
    pass


class _TurboStock(_Stock):
    pass


class _StockText(nn.Module):
    pass


class _TurboStockText(_StockText):
    pass


@pytest.fixture
def scratch_registry(monkeypatch):
    """A registry and conversion table that forget what a test registers."""
    monkeypatch.setattr(registry, "_ADAPTERS", list(registry._ADAPTERS))
    get_checkpoint_conversion_mapping("vit")  # builds the table
    names = ["_Stock", "_TurboStock", "_StockText", "_TurboStockText"]
    yield names
    for name in names:
        conversion_mapping._checkpoint_conversion_mapping_cache.pop(name, None)
        conversion_mapping.USER_REGISTERED_MAPPINGS.discard(name)


def test_register_adapter_shares_weight_conversions_and_extra_encoders(scratch_registry):
    renames = [WeightRenaming(r"^old\.", "new.")]
    register_checkpoint_conversion_mapping("_Stock", renames)
    register_checkpoint_conversion_mapping("_StockText", [WeightRenaming(r"^txt\.", "text.")])
    extra = ReducibleEncoder(
        name="text", settings=("text_r",), description="a test text encoder", encoders=lambda model: [],
        layers=lambda encoder: encoder.layers, class_map={_StockText: _TurboStockText}, attention_attr="attn",
        mlp_attr="mlp", runtime_config=lambda config: config, tokens_for_config=lambda config: 8,
    )
    adapter = register_adapter(FamilyAdapter(
        name="scratch", model_classes=(_Stock,), vision_models=lambda model: [model], layers=lambda model: model.layers,
        class_map={_Stock: _TurboStock}, attention_attr="attn", mlp_attr="mlp", extra_encoders=(extra,),
    ))
    assert registered_adapters()[-1] is adapter and adapter_by_name("scratch") is adapter
    assert find_adapter(_Stock()) is adapter and "_Stock" in supported_classes()
    assert repr(get_checkpoint_conversion_mapping("_TurboStock")) == repr(renames)
    assert "txt" in repr(get_checkpoint_conversion_mapping("_TurboStockText"))
    assert encoder_settings()["text_r"] == [BLIP_ITM_TEXT_ENCODER, extra]
