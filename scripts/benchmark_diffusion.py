"""Stable Diffusion: the stock UNet, tomesd and Turbo at the same merge ratios, side by side in one run.

Without `--checkpoint`: one random-weight UNet of SD-1.5's layout (64 x 64 latents, 77 text states of width 768)
with its channel widths scaled by `--width` and `--layers-per-block` layers per block to fit a small CPU, a DDIM
loop of `--steps` steps with classifier-free guidance (batch 2: unconditional and conditional rows). Every setting
is applied to that same UNet before its timed call; rounds are round-robin with a rotating start
(`turbo_hf.evaluation.timing.interleaved_times`). Reported: seconds per image (median, min-max, spread), speed-up
over stock from the same run, FLOP speed limit, peak resident memory, and the final latents' difference from stock.
With `--checkpoint PATH` (a local Stable Diffusion folder, e.g. SD-1.5): the real pipeline, prompt `--prompt`,
and the decoded images' PSNR and mean pixel error against the stock images.

tomesd must be importable for its rows (a separate environment: it is not a dependency of turbo-hf).

    PYTHONPATH=src python scripts/benchmark_diffusion.py --width 0.5 --layers-per-block 1 --steps 3 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from turbo_hf.evaluation import diffusion_benchmark as bench  # noqa: E402
from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.report import package_version, run_metadata  # noqa: E402
from turbo_hf.evaluation.tables import markdown_table, publish  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a local Stable Diffusion folder (default: random UNet)")
    parser.add_argument("--ratios", type=comma_type(float), default=[0.3, 0.5, 0.6], help="merge ratios")
    parser.add_argument("--methods", type=comma_type(str), default=["tomesd", "turbo"], help="tomesd,turbo")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps per image")
    parser.add_argument("--width", type=float, default=1.0, help="channel width factor of the random UNet")
    parser.add_argument("--layers-per-block", type=int, default=2, help="layers per UNet block (SD-1.5: 2)")
    parser.add_argument("--latent-size", type=int, default=64, help="latent side (SD-1.5 at 512 px: 64)")
    parser.add_argument("--mode", default="turbo", help="Turbo mode of the Turbo rows")
    parser.add_argument("--alpha", type=float, default=None, help="Turbo alpha (default: TurboConfig's)")
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--no-sd15-flops", action="store_true", help="skip the full SD-1.5 FLOP count (meta device)")
    parser.add_argument("--out", default="benchmarks", help="output folder")
    parser.add_argument("--name", default="diffusion_sd15_shapes", help="output file stem")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    turbo = {"mode": args.mode, **({} if args.alpha is None else {"alpha": args.alpha})}
    settings = bench.settings_for(args.ratios, args.methods, turbo)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.checkpoint, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        unet, what = pipe.unet, f"the pipeline at {args.checkpoint}, prompt {args.prompt!r}"
        run = bench.pipeline_run(pipe, args.prompt, args.steps, seed=args.seed)
        compare = bench.image_difference
    else:
        from diffusers import DDIMScheduler, UNet2DConditionModel

        config = {**bench.sd15_unet_config(args.width, args.layers_per_block), "sample_size": args.latent_size}
        unet = UNet2DConditionModel(**config).eval()
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        latents, text = bench.random_unet_inputs(config, args.seed)
        run = lambda: bench.sample_latents(unet, scheduler, latents, text, args.steps)  # noqa: E731
        what = (f"a random-weight UNet of SD-1.5's layout, channels {config['block_out_channels']}, "
                f"{config['layers_per_block']} layer(s) per block, {args.latent_size} x {args.latent_size} latents")
        compare = bench.latent_difference
    threads = torch.get_num_threads()
    warning = bench.load_warning(threads)
    meta = run_metadata(**vars(args))  # before timing: the load average it records is the one at the start
    print(f"torch threads: {threads}  |  {what}  |  {args.steps} steps, CFG batch 2  |  "
          f"{args.warmup} warm-up + {args.rounds} rounds" + (f"\nWARNING: {warning}" if warning else ""))
    rows = bench.measure(unet, settings, run, compare, repeats=args.rounds, warmup=args.warmup)
    # the unscaled SD-1.5 UNet, for what the scaled one leaves out
    full = {} if args.no_sd15_flops else bench.full_size_flops(settings)
    for row in rows:
        row["sd15_gflops_per_unet_call"] = full.get(row["setting"])
        row["sd15_flops_speed_limit"] = full["stock"] / full[row["setting"]] if full else None

    quality = (["PSNR dB", "pixel err /255"], ["psnr_db", "pixel_mean_abs_255"]) if args.checkpoint else (
        ["latent mean abs", "latent max abs", "relative"], ["latent_mean_abs", "latent_max_abs", "latent_relative"])
    headers = ["setting", "speed-up vs stock", "of minima", "s / image", "min-max s", "spread", "FLOP limit",
               "full SD-1.5 FLOP limit", "peak RSS MB", *quality[0]]
    table = markdown_table(headers, [
        [row["setting"], f"{row['speedup']:.2f}x",
         f"{row['speedup_of_minima']:.2f}x", f"{row['median_s']:.2f}", f"{row['min_s']:.2f}-{row['max_s']:.2f}",
         f"{row['spread']:.0%}", f"{row['flops_speed_limit']:.2f}x", f"{row['sd15_flops_speed_limit']:.2f}x" if full else "n/a",
         f"{row['peak_rss_mb']:.0f}",
         *[f"{row[key]:.4g}" for key in quality[1]]]
        for row in rows
    ])
    meta["versions"].update({name: package_version(name) for name in ("diffusers", "tomesd")})
    meta["model"] = {"folder": args.checkpoint or what}
    meta["load_warning"] = warning
    meta["runtime_s"] = time.perf_counter() - started
    notes = (
        f"{what}; {args.steps} DDIM steps with classifier-free guidance (guidance 7.5, batch 2) per image, float32, "
        f"CPU, torch threads: {threads}. One UNet for every row; each setting applied before its timed call, "
        f"{args.warmup} warm-up and {args.rounds} timed round-robin rounds with a rotating start; median seconds "
        "per image, min-max and spread = (max - min) / median over the rounds. Speed-up = stock median / row "
        "median in this run, of minima = stock min / row min (the least disturbed rounds); FLOP limit = stock FLOPs / row FLOPs (torch's FLOP counter) of the model timed, full "
        "SD-1.5 FLOP limit the same for the unscaled SD-1.5 UNet at 64 x 64 (counted on the meta device); peak RSS = the process's "
        "resident memory during one image (weights included). tomesd rows: `tomesd.apply_patch(unet, ratio)` with "
        f"its defaults (random cells, self-attention at full resolution). Turbo rows: `apply_turbo(unet, "
        f"merge_ratio=ratio, {', '.join(f'{k}={v!r}' for k, v in turbo.items())})` with the other defaults "
        "(top-left cells, self-attention at full resolution). "
        + ("Quality: decoded images against the stock images." if args.checkpoint else
           "No real SD weights can be had here: the difference is of final latents from random weights (not an image "
           "quality measure); pass --checkpoint PATH with a real Stable Diffusion folder for PSNR / pixel error.")
        + (f" **{warning}**" if warning else "")
    )
    title = "# Stable Diffusion: stock, tomesd and Turbo at the same merge ratios"
    return publish(args.out, args.name, title, notes, table, meta, rows)


if __name__ == "__main__":
    main()
