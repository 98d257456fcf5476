"""The GPU speed check: which SDPA kernel runs with and without Turbo's bias, the bias as an additive mask against
FlexAttention's `score_mod` (`turbo_flex`), and the model speed table in bf16 with synchronised timing.

Every function also runs on CPU (the kernel probe then reports the CPU backends; FlexAttention runs its unfused
reference there), which is how the tests exercise it cheaply.
"""

from __future__ import annotations

import copy
import statistics
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import apply_turbo, turbo_plan
from ..modeling.turbo_attention import TURBO_FLEX, turbo_flex_attention
from .timing import interleaved_times, timing_summary

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def attention_inputs(batch: int, heads: int, tokens: int, head_dim: int, device, dtype, seed: int = 0):
    """Random queries, keys, values (B, H, N, Dh) and a `log(size)` key bias (B, 1, 1, N) of merged sizes 1-4."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=generator).to(device, dtype) for _ in range(3))
    sizes = torch.randint(1, 5, (batch, tokens), generator=generator).float()
    return q, k, v, sizes.log()[:, None, None, :].to(device, dtype)


def sdpa_kernels(query, keys, values, bias) -> dict[str, dict[str, bool | str]]:
    """For each SDPA backend alone (`sdpa_kernel`), whether it runs without a mask and with the additive bias
    (True, or the reasons torch gave for refusing it)."""
    report = {}
    for name, backend in BACKENDS.items():
        report[name] = {}
        for case, mask in (("no bias", None), ("log(size) bias", bias)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
                    report[name][case] = True
                except RuntimeError as error:
                    # torch warns the reason each kernel gave, then raises a generic "no viable backend"
                    reasons = [str(w.message).strip() for w in caught] or [str(error).strip()]
                    report[name][case] = "; ".join(reason.splitlines()[0] for reason in reasons)[:200]
    return report


def attention_speed(query, keys, values, bias, rounds: int, warmup: int, device) -> dict[str, dict]:
    """Timing of one attention call: SDPA without bias, SDPA with the bias as an additive mask, `turbo_flex`
    (the bias as a `score_mod`; compiled off the CPU); plus the largest difference of the two biased outputs."""
    scale = query.shape[-1] ** -0.5
    runs = {
        "sdpa, no bias": lambda: F.scaled_dot_product_attention(query, keys, values, scale=scale),
        "sdpa, additive bias": lambda: F.scaled_dot_product_attention(query, keys, values, attn_mask=bias,
                                                                      scale=scale),
        "turbo_flex, score_mod bias": lambda: turbo_flex_attention(None, query, keys, values, bias, scaling=scale),
    }
    with torch.inference_mode():
        times = interleaved_times(runs, repeats=rounds, warmup=max(warmup, 1), rotate=True, device=device)
        flex = turbo_flex_attention(None, query, keys, values, bias, scaling=scale)[0].transpose(1, 2)
        sdpa = runs["sdpa, additive bias"]()
    difference = float((flex.float() - sdpa.float()).abs().max())
    return {name: {**timing_summary(samples), "max_abs_diff_flex_vs_sdpa": difference}
            for name, samples in times.items()}


def model_configs(dry_run: bool) -> dict[str, tuple[type, object]]:
    """ViT-B/16 (224 px, 197 tokens) and DINOv2-B/14 (224 px, 257 tokens) shapes; tiny ones for a dry run."""
    if dry_run:
        tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)
        return {"vit": (ViTModel, ViTConfig(patch_size=8, **tiny)),
                "dinov2": (Dinov2Model, Dinov2Config(patch_size=8, **tiny))}
    return {"vit-b16": (ViTModel, ViTConfig()), "dinov2-b14": (Dinov2Model, Dinov2Config())}


def model_speed(model_class, config, r_values, batch: int, dtype, device, rounds: int, warmup: int) -> list[dict]:
    """Stock against Turbo (SDPA, and `turbo_flex` at the largest r) for one model shape, interleaved."""
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    stock = model_class(config).to(device, dtype).eval()
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    models = {"stock": (stock, 1.0)}
    for r in r_values:
        for attn in ("sdpa", TURBO_FLEX) if r == max(r_values) else ("sdpa",):
            model = copy.deepcopy(stock)
            model.set_attn_implementation(attn)
            apply_turbo(model, TurboConfig(r=r))
            models[f"turbo r={r} ({attn})"] = (model, turbo_plan(model, tokens)["flops_fraction"])
    pixels = torch.randn(batch, 3, config.image_size, config.image_size).to(device, dtype)
    with torch.inference_mode():
        runs = {name: (lambda model=model: model(pixel_values=pixels)) for name, (model, _) in models.items()}
        times = interleaved_times(runs, repeats=rounds, warmup=max(warmup, 1), rotate=True, device=device)
    stock_s = statistics.median(times["stock"])
    rows = []
    for name, (_, fraction) in models.items():
        summary = timing_summary(times[name])
        rows.append({"setting": name, "tokens": tokens, "flop_limit": 1 / fraction,
                     "speedup": stock_s / summary["median"], "images_per_s": batch / summary["median"], **summary})
    return rows


__all__ = ["BACKENDS", "attention_inputs", "attention_speed", "model_configs", "model_speed", "sdpa_kernels"]
