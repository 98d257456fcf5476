"""Tiny random models of every supported family, built by hand (no Hub access)."""

from __future__ import annotations

import torch
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

IMAGE_SIZE = 32
PATCH = 4  # 64 patches (+ [CLS] = 65 tokens where there is one)
LAYERS = 4


def _vision_kwargs() -> dict:
    return dict(
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )


def vit_config(**kw):
    return ViTConfig(**_vision_kwargs(), **kw)


def dinov2_config(**kw):
    args = _vision_kwargs()
    args.pop("intermediate_size")
    return Dinov2Config(**args, mlp_ratio=2, **kw)


def clip_vision_config(**kw):
    return CLIPVisionConfig(**_vision_kwargs(), projection_dim=16, **kw)


def clip_config(**kw):
    text = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                bos_token_id=97, eos_token_id=98, pad_token_id=1)
    return CLIPConfig(text_config=text, vision_config=_vision_kwargs(), projection_dim=16, **kw)


def siglip_vision_config(**kw):
    return SiglipVisionConfig(**_vision_kwargs(), **kw)


def siglip_config(**kw):
    text = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return SiglipConfig(text_config=text, vision_config=_vision_kwargs(), **kw)


# name -> (model class, config factory, protects [CLS])
FAMILIES = {
    "vit": (ViTModel, vit_config, True),
    "vit-cls": (ViTForImageClassification, vit_config, True),
    "dinov2": (Dinov2Model, dinov2_config, True),
    "dinov2-cls": (Dinov2ForImageClassification, dinov2_config, True),
    "clip-vision": (CLIPVisionModel, clip_vision_config, True),
    "clip-vision-proj": (CLIPVisionModelWithProjection, clip_vision_config, True),
    "clip-cls": (CLIPForImageClassification, clip_config, True),
    "clip": (CLIPModel, clip_config, True),
    "siglip-vision": (SiglipVisionModel, siglip_vision_config, False),
    "siglip-cls": (SiglipForImageClassification, siglip_config, False),
    "siglip": (SiglipModel, siglip_config, False),
}


def build(name: str, attn_implementation: str = "sdpa", seed: int = 0, **config_kw):
    """A tiny random model of a family, in eval mode."""
    model_class, make_config, _ = FAMILIES[name]
    torch.manual_seed(seed)
    config = make_config(**config_kw)
    config._attn_implementation = attn_implementation
    for sub in ("vision_config", "text_config"):
        if hasattr(config, sub):
            getattr(config, sub)._attn_implementation = attn_implementation
    return model_class(config).eval()


def inputs(name: str, batch: int = 2, seed: int = 1, image_size: int = IMAGE_SIZE) -> dict:
    """Model inputs: pixel values, plus text ids for the two-tower models."""
    generator = torch.Generator().manual_seed(seed)
    args = {"pixel_values": torch.randn(batch, 3, image_size, image_size, generator=generator)}
    if name in ("clip", "siglip"):
        args["input_ids"] = torch.randint(1, 99, (batch, 7), generator=generator)
    return args


def main_output(name: str, output) -> torch.Tensor:
    """The tensor a user reads from each model's output."""
    if name in ("clip", "siglip"):
        return torch.cat([output.logits_per_image.flatten(), output.image_embeds.flatten()])
    if name.endswith("-cls"):
        return output.logits
    if name == "clip-vision-proj":
        return output.image_embeds
    if output.pooler_output is not None:
        return torch.cat([output.last_hidden_state.flatten(), output.pooler_output.flatten()])
    return output.last_hidden_state
