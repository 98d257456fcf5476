"""Tiny random Stable Diffusion parts built offline (diffusers needed: `turbo-hf[diffusion]`): a UNet with the
SD 1.x block layout at toy widths, and a `StableDiffusionPipeline` around it (tiny CLIP text model, word-level
tokenizer, tiny VAE, DDIM scheduler)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

TEXT_WIDTH = 16
PROMPT_LENGTH = 12
TINY_UNET = dict(in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=4)
WORDS = ["<pad>", "<unk>", "<bos>", "<eos>", "a", "photo", "of", "cat", "dog", "red", "blue", "on", "the", "grass"]


def tiny_unet(seed: int = 0, sample_size: int = 16) -> UNet2DConditionModel:
    """SD 1.x's UNet layout (cross-attention down blocks, then a plain one; mirrored up blocks) at widths 8 / 16,
    one transformer block per attention, text width 16, `sample_size` x `sample_size` latents, random weights."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=sample_size, **TINY_UNET).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `WORDS` that pads and truncates to `PROMPT_LENGTH` tokens, as SD's CLIP one."""
    backend = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>", model_max_length=PROMPT_LENGTH)


def tiny_pipeline(seed: int = 0, sample_size: int = 16) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` of tiny random parts: images of `8 * sample_size / 2` pixels (the VAE halves once)."""
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS), hidden_size=TEXT_WIDTH, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=PROMPT_LENGTH, pad_token_id=0, bos_token_id=2,
                                        eos_token_id=3)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, sample_size=2 * sample_size).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(), unet=tiny_unet(seed, sample_size),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_inputs(batch: int = 2, sample_size: int = 16, seed: int = 0, text_tokens: int = PROMPT_LENGTH) -> dict:
    """Random UNet inputs: latents, one timestep, text states."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, sample_size, sample_size, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, text_tokens, TEXT_WIDTH, generator=generator),
    }


__all__ = ["PROMPT_LENGTH", "TEXT_WIDTH", "TINY_UNET", "tiny_pipeline", "tiny_tokenizer", "tiny_unet", "unet_inputs"]
