"""Tiny random models of every supported family, built by hand (no Hub access).

`build`/`inputs`/`main_output` serve the vision families of `FAMILIES`; the config factories below them build
the text encoders, BLIP, BLIP-2, InstructBLIP and LLaVA (`turbo_hf.testing.family_tester` feeds them), and
Qwen2-VL / Qwen2.5-VL with `qwen_inputs` (their own test file feeds them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    BlipConfig,
    Blip2Config,
    CLIPConfig,
    CLIPTextConfig,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    InstructBlipConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextVideoConfig,
    LlavaOnevisionConfig,
    PretrainedConfig,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipModel,
    SiglipTextConfig,
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


CLIP_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 bos_token_id=97, eos_token_id=98, pad_token_id=1)
SIGLIP_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def clip_config(**kw):
    return CLIPConfig(text_config=CLIP_TEXT, vision_config=_vision_kwargs(), projection_dim=16, **kw)


def clip_text_config(**kw):
    return CLIPTextConfig(**CLIP_TEXT, **kw)


def siglip_text_config(**kw):
    return SiglipTextConfig(**SIGLIP_TEXT, **kw)


def siglip_vision_config(**kw):
    return SiglipVisionConfig(**_vision_kwargs(), **kw)


def siglip_config(**kw):
    return SiglipConfig(text_config=SIGLIP_TEXT, vision_config=_vision_kwargs(), **kw)


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


# ------------------------------------------------------------------ text encoders and vision-language models

SMALL = dict(hidden_size=32, intermediate_size=64)
BLIP_SPECIAL = dict(bos_token_id=97, sep_token_id=98, eos_token_id=2, pad_token_id=0)
OPT_TEXT = dict(model_type="opt", **SMALL, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=99,
                word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=2)
QFORMER = dict(**SMALL, num_hidden_layers=2, num_attention_heads=2, cross_attention_frequency=1,
               max_position_embeddings=32)
QUERIES, BLIP2_IMAGE_TOKEN, LLAVA_IMAGE_TOKEN = 4, 98, 4


def set_attention(config: PretrainedConfig, attn: str) -> PretrainedConfig:
    """Give a config and each of its sub-configs the attention implementation `attn`."""
    config._attn_implementation = attn
    for sub in ("vision_config", "text_config", "qformer_config"):
        if hasattr(config, sub):
            getattr(config, sub)._attn_implementation = attn
    return config


def bert_config(**kw) -> BertConfig:
    """A 3-layer BERT encoder (pad id 0)."""
    return BertConfig(vocab_size=99, **SMALL, num_hidden_layers=3, num_attention_heads=4,
                      max_position_embeddings=64, pad_token_id=0, **kw)


def blip_config(**kw) -> BlipConfig:
    """BLIP with a 4-layer vision tower and a 2-layer text model; large initial weights, so that the tiny
    decoder's choices depend on the image (BLIP's vision default is 1e-10)."""
    tower = dict(**SMALL, num_attention_heads=4)
    text = dict(tower, vocab_size=99, num_hidden_layers=2, max_position_embeddings=64, initializer_range=0.3,
                **BLIP_SPECIAL)
    vision = dict(tower, num_hidden_layers=4, image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=0.2)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16,
                      initializer_range=0.3, **kw)


def blip_vision_config(**kw):
    return blip_config(**kw).vision_config


def _blip2_vision() -> dict:
    return dict(**SMALL, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)


def blip2_config(qformer_text: bool = False, **kw) -> Blip2Config:
    """BLIP-2: a 2-layer vision tower, a 2-layer Q-Former with 4 queries, a 2-layer OPT."""
    qformer = dict(QFORMER, vocab_size=99, use_qformer_text_input=qformer_text)
    return Blip2Config(vision_config=_blip2_vision(), qformer_config=qformer, text_config=OPT_TEXT,
                       num_query_tokens=QUERIES, image_token_index=BLIP2_IMAGE_TOKEN, image_text_hidden_size=16, **kw)


def instructblip_config(**kw) -> InstructBlipConfig:
    """InstructBLIP: BLIP-2's towers with an instruction-aware Q-Former (vocabulary of 50)."""
    return InstructBlipConfig(vision_config=_blip2_vision(), qformer_config=dict(QFORMER, vocab_size=50),
                              text_config=OPT_TEXT, num_query_tokens=QUERIES, image_token_index=BLIP2_IMAGE_TOKEN,
                              **kw)


def llava_config(**kw) -> LlavaConfig:
    """LLaVA-1.5: a 3-layer CLIP tower (64 patches + [CLS]) and a 2-layer Llama."""
    vision = dict(model_type="clip_vision_model", **_vision_kwargs(), projection_dim=16)
    vision["num_hidden_layers"] = 3
    text = dict(model_type="llama", vocab_size=120, **SMALL, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE_TOKEN, pad_token_id=1, **kw)


GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # anyres tiles of the 32 px tower
LLAVA_VIDEO_TOKEN = 5


def _next_parts(tower: str, text: str) -> dict:
    vision = dict(model_type=tower, **_vision_kwargs())
    vision["num_hidden_layers"] = 3
    text = dict(model_type=text, vocab_size=120, **SMALL, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    return dict(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE_TOKEN,
                image_grid_pinpoints=GRID_PINPOINTS, pad_token_id=1)


def llava_next_config(**kw) -> LlavaNextConfig:
    """LLaVA-NeXT: a 3-layer CLIP tower (32 px crops, 64 patches + [CLS]), anyres tiles up to 64 px, a 2-layer Llama."""
    return LlavaNextConfig(**_next_parts("clip_vision_model", "llama"), **kw)


def llava_onevision_config(**kw) -> LlavaOnevisionConfig:
    """LLaVA-OneVision: a 3-layer SigLIP tower (32 px crops, 64 patches), anyres tiles up to 64 px, a 2-layer Qwen2."""
    return LlavaOnevisionConfig(**_next_parts("siglip_vision_model", "qwen2"), video_token_id=LLAVA_VIDEO_TOKEN, **kw)


def llava_next_video_config(**kw) -> LlavaNextVideoConfig:
    """LLaVA-NeXT-Video: LLaVA-NeXT's tiny parts and a video token (16 tokens per pooled 32 px frame)."""
    return LlavaNextVideoConfig(**_next_parts("clip_vision_model", "llama"), video_token_id=LLAVA_VIDEO_TOKEN, **kw)


def large_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights large enough that every part (the query tokens included) moves the outputs; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 or "bias" in name:
                scale = 1.0 if "query_tokens" in name else 0.2
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model.eval()


def bert_tokenizer(words: Sequence[str]) -> BertTokenizer:
    """A word-level BERT tokenizer built by hand: [PAD] = 0, [UNK], [CLS], [SEP], [MASK], then `words` (lower
    case; any other word is [UNK]); at most 94 words, so that its ids fit `bert_config()`'s vocabulary."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(word.lower() for word in words)]
    if len(vocab) > 99:
        raise ValueError(f"`words` must hold at most 94 distinct words, got {len(vocab) - 5}.")
    return BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})


# Qwen2-VL / Qwen2.5-VL: token ids of the tiny vocabulary (120), patch 2 px, 2x2 merger, temporal patch 2
QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN, QWEN_VISION_START, QWEN_VISION_END, QWEN_PAD = 110, 111, 112, 113, 0
QWEN_PATCH_DIM = 3 * 2 * 2 * 2  # channels * temporal patch * patch * patch


def _qwen_text(layers: int) -> dict:
    return dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})


def _qwen_ids() -> dict:
    return dict(image_token_id=QWEN_IMAGE_TOKEN, video_token_id=QWEN_VIDEO_TOKEN,
                vision_start_token_id=QWEN_VISION_START, vision_end_token_id=QWEN_VISION_END, pad_token_id=QWEN_PAD)


def qwen2_vl_config(config_class=None, layers: int = 4, **kw):
    """Qwen2-VL: a 2-block vision tower (32 wide, patch 2, 2x2 merger) and a `layers`-layer Qwen2 decoder with mRoPE."""
    from transformers import Qwen2VLConfig

    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=2)
    config_class = config_class or Qwen2VLConfig
    return config_class(text_config=_qwen_text(layers), vision_config=vision, **_qwen_ids(), **kw)


def qwen2_5_vl_config(config_class=None, layers: int = 4, **kw):
    """Qwen2.5-VL: a 2-block windowed vision tower (window 8 px, block 1 full attention) and a Qwen2 decoder."""
    from transformers import Qwen2_5_VLConfig

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=2,
                  window_size=8, fullatt_block_indexes=[1])
    config_class = config_class or Qwen2_5_VLConfig
    return config_class(text_config=_qwen_text(layers), vision_config=vision, **_qwen_ids(), **kw)


def qwen_inputs(grids: list[list[tuple[int, int]]], texts: list[list[int]], seed: int = 0) -> dict:
    """Left-padded inputs of a Qwen-VL model without a processor.

    Args:
        grids: per sample, the (h, w) patch grid of each of its images (even numbers: the 2x2 merger), t = 1.
        texts: per sample, the text token ids after its images (ids below 100).

    Returns:
        `input_ids`, `attention_mask`, `mm_token_type_ids`, `pixel_values`, `image_grid_thw`.
    """
    generator = torch.Generator().manual_seed(seed)
    rows, types, thw = [], [], []
    for sample_grids, text in zip(grids, texts):
        ids, kinds = [5], [0]
        for h, w in sample_grids:
            count = h * w // 4
            ids += [QWEN_VISION_START] + [QWEN_IMAGE_TOKEN] * count + [QWEN_VISION_END]
            kinds += [0] + [1] * count + [0]
            thw.append((1, h, w))
        ids += list(text)
        kinds += [0] * len(text)
        rows.append(ids)
        types.append(kinds)
    length = max(len(ids) for ids in rows)
    pad = [length - len(ids) for ids in rows]
    input_ids = torch.tensor([[QWEN_PAD] * p + ids for p, ids in zip(pad, rows)])
    grid = torch.tensor(thw)
    patches = int(grid.prod(-1).sum())
    return dict(
        input_ids=input_ids,
        attention_mask=torch.tensor([[0] * p + [1] * len(ids) for p, ids in zip(pad, rows)]),
        mm_token_type_ids=torch.tensor([[0] * p + kinds for p, kinds in zip(pad, types)]),
        pixel_values=torch.randn(patches, QWEN_PATCH_DIM, generator=generator),
        image_grid_thw=grid,
    )


def qwen3_vl_config(config_class=None, layers: int = 4, **kw):
    """Qwen3-VL: a 2-block tower (patch 2, 2x2 merger, deepstack features of block 0 added after decoder layer 0)
    and a Qwen3 decoder (q/k norms, interleaved mRoPE)."""
    from transformers import Qwen3VLConfig

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=2,
                  num_position_embeddings=16, deepstack_visual_indexes=[0])
    text = dict(_qwen_text(layers), head_dim=8)
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_interleaved=True)
    config_class = config_class or Qwen3VLConfig
    return config_class(text_config=text, vision_config=vision, **_qwen_ids(), **kw)


def qwen3_vl_deepstack_config(**kw):
    """Qwen3-VL as `qwen3_vl_config`, with the features of both tower blocks added as deepstack features after decoder
    layers 0 and 1 (`deepstack_visual_indexes=[0, 1]`): image tokens can be reduced from decoder layer 2 on."""
    config = qwen3_vl_config(**kw)
    config.vision_config.deepstack_visual_indexes = [0, 1]
    return config
