"""Stable Diffusion side by side: the stock UNet, tomesd and Turbo at the same merge ratios, in one run.

Without a checkpoint, one random-weight UNet of SD-1.5's layout (`sd15_unet_config`, optionally narrowed and made
shallower to fit a small CPU) runs a DDIM sampling loop with classifier-free guidance (a batch of an
unconditional and a conditional row) on fixed random latents and random text states; each setting is applied to
that same UNet before its timed call (`interleaved_times`' `prepare`), and its final latents are compared with the
stock ones. With a checkpoint (a local Stable Diffusion folder), the real pipeline generates images from prompts
and they are compared with the stock images (PSNR, mean absolute pixel error).

tomesd is a peer library, not a dependency of turbo-hf: it is imported only when its settings are asked for.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..modeling.patching import apply_turbo, is_turbo_applied, remove_turbo
from .measurement import count_flops, peak_memory
from .timing import interleaved_times, load_warning

# The SD-1.5 UNet (`runwayml/stable-diffusion-v1-5`, unet/config.json): 64 x 64 latents, CLIP ViT-L text states.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_TEXT_TOKENS = 77
METHODS = ("stock", "tomesd", "turbo")


def sd15_unet_config(width: float = 1.0, layers_per_block: int = 2) -> dict:
    """SD-1.5's UNet config with every channel count scaled by `width` (a multiple of 32 each, for the group
    norms; the attention heads keep 8 channels' worth: `attention_head_dim=8` heads) and `layers_per_block`."""
    channels = tuple(max(32, round(c * width / 32) * 32) for c in SD15_UNET["block_out_channels"])
    return {**SD15_UNET, "block_out_channels": channels, "layers_per_block": layers_per_block}


@dataclass(frozen=True)
class DiffusionSetting:
    """One row: `method` ("stock", "tomesd" or "turbo") at a merge `ratio` (tomesd's meaning for both)."""

    method: str
    ratio: float = 0.0
    turbo: dict | None = None

    @property
    def label(self) -> str:
        return "stock" if self.method == "stock" else f"{self.method} ratio={self.ratio:g}"


def settings_for(ratios: list[float], methods: list[str], turbo: dict | None = None) -> list[DiffusionSetting]:
    """Stock first, then each method at each ratio; refuses unknown methods and ratios outside [0, 0.75]."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"`methods` must be among {list(METHODS)}, got {sorted(unknown)}.")
    bad = [ratio for ratio in ratios if not 0 < ratio <= 0.75]
    if bad:
        raise ValueError(f"merge ratios must be in (0, 0.75] (2 x 2 cells), got {bad}.")
    rows = [DiffusionSetting("stock")]
    rows += [DiffusionSetting(method, ratio, turbo if method == "turbo" else None)
             for method in methods if method != "stock" for ratio in ratios]
    return rows


def _tomesd():
    try:
        import tomesd
    except ImportError as error:
        raise ImportError("the tomesd rows need tomesd (`pip install tomesd`, in a separate environment: it is "
                          "not a dependency of turbo-hf).") from error
    return tomesd


def use(unet: torch.nn.Module, setting: DiffusionSetting) -> None:
    """Put `unet` in the state of `setting`: stock, tomesd-patched or Turbo-patched (undoing the previous one)."""
    if is_turbo_applied(unet):
        remove_turbo(unet)
    if setting.method == "tomesd" or hasattr(unet, "_tome_info"):
        _tomesd().remove_patch(unet)
    if setting.method == "tomesd":
        _tomesd().apply_patch(unet, ratio=setting.ratio)
    elif setting.method == "turbo":
        apply_turbo(unet, merge_ratio=setting.ratio, **(setting.turbo or {}))


def sample_latents(unet, scheduler, latents: torch.Tensor, text: torch.Tensor, steps: int,
                   guidance: float = 7.5) -> torch.Tensor:
    """A DDIM loop with classifier-free guidance: `text` holds the unconditional then the conditional states."""
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    with torch.inference_mode():
        for step in scheduler.timesteps:
            both = scheduler.scale_model_input(torch.cat([latents] * 2), step)
            uncond, cond = unet(both, step, encoder_hidden_states=text).sample.chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), step, latents).prev_sample
    return latents


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1] against a reference (inf when equal)."""
    mse = float(((image.float() - reference.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def measure(unet, settings: list[DiffusionSetting], run: Callable[[], torch.Tensor], compare: Callable[[torch.Tensor,
            torch.Tensor], dict], repeats: int, warmup: int) -> list[dict]:
    """Time `run` (one image's generation, returning its output) under every setting on the same `unet`, in
    round-robin rounds with a rotating start; then, in one untimed call per setting, its output (compared with
    the stock one by `compare`), its peak memory and its FLOPs. Leaves `unet` stock."""
    by_label = {setting.label: setting for setting in settings}
    runs = {label: run for label in by_label}
    prepare = {label: (lambda setting=setting: use(unet, setting)) for label, setting in by_label.items()}
    times = interleaved_times(runs, repeats=repeats, warmup=warmup, rotate=True, prepare=prepare)
    outputs, rows = {}, []
    for label, setting in by_label.items():
        use(unet, setting)
        torch.manual_seed(0)  # tomesd's random cells
        flops = []
        memory = peak_memory(lambda: flops.append(count_flops(lambda: outputs.__setitem__(label, run()))),
                             torch.device("cpu"))
        samples = times[label]
        rows.append({"setting": label, "method": setting.method, "ratio": setting.ratio,
                     "median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
                     "spread": (max(samples) - min(samples)) / statistics.median(samples), "seconds": samples,
                     "peak_rss_mb": memory["peak_mb"], "peak_increase_mb": memory["increase_mb"],
                     "gflops": flops[0] / 1e9})
    use(unet, settings[0])
    stock = statistics.median(times["stock"])
    for row in rows:
        row["speedup"] = stock / row["median_s"]
        row["speedup_of_minima"] = rows[0]["min_s"] / row["min_s"]
        row["flops_speed_limit"] = rows[0]["gflops"] / row["gflops"]
        row.update(compare(outputs[row["setting"]], outputs["stock"]))
    return rows


def full_size_flops(settings: list[DiffusionSetting], config: dict | None = None) -> dict[str, float]:
    """GFLOPs of one UNet call (CFG batch 2) of the full-size UNet (`config`, default SD-1.5's) under every setting,
    counted on the meta device: no weights, no time, the shapes alone."""
    from diffusers import UNet2DConditionModel

    config = config or SD15_UNET
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config).eval()
        size = config["sample_size"]
        latents = torch.empty(2, config["in_channels"], size, size)
        text = torch.empty(2, SD15_TEXT_TOKENS, config["cross_attention_dim"])
    found = {}
    for setting in settings:
        use(unet, setting)
        found[setting.label] = count_flops(lambda: unet(latents, 500, encoder_hidden_states=text)) / 1e9
    use(unet, settings[0])
    return found


def latent_difference(output: torch.Tensor, stock: torch.Tensor) -> dict:
    """Mean and max absolute difference of final latents, and the mean relative to the stock latents' mean size."""
    difference = (output.float() - stock.float()).abs()
    return {"latent_mean_abs": float(difference.mean()), "latent_max_abs": float(difference.max()),
            "latent_relative": float(difference.mean() / stock.float().abs().mean())}


def image_difference(output: torch.Tensor, stock: torch.Tensor) -> dict:
    """PSNR (dB) and mean absolute pixel error (0-255 scale) of images in [0, 1] against the stock ones."""
    return {"psnr_db": psnr(output, stock), "pixel_mean_abs_255": float((output - stock).abs().mean()) * 255}


def pipeline_run(pipe, prompt: str, steps: int, guidance: float = 7.5, seed: int = 0,
                 size: int | None = None) -> Callable[[], torch.Tensor]:
    """One image of a real pipeline from `prompt` (a fixed seed): a callable returning it in [0, 1], (1, 3, H, W)."""

    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, height=size,
                    width=size, output_type="pt").images

    return run


def random_unet_inputs(config: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random latents (1, 4, size, size) and text states (2, 77, width): unconditional, conditional."""
    generator = torch.Generator().manual_seed(seed)
    size = config["sample_size"]
    latents = torch.randn(1, config["in_channels"], size, size, generator=generator)
    text = torch.randn(2, SD15_TEXT_TOKENS, config["cross_attention_dim"], generator=generator)
    return latents, text


__all__ = ["DiffusionSetting", "METHODS", "SD15_UNET", "full_size_flops", "image_difference", "latent_difference", "load_warning",
           "measure", "pipeline_run", "psnr", "random_unet_inputs", "sample_latents", "sd15_unet_config", "settings_for", "use"]
