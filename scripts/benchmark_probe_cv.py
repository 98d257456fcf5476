"""Cross-validated linear probe on all of sklearn digits: a lower-noise comparison of reduction settings.

`benchmark_quality.py` tests on one 30 % split (540 images; one image is 0.19 points). Here every image is a
test image once: 5 stratified folds, a probe fitted on the STOCK features of the other folds, evaluated on
the fold's features from each setting. Reports accuracy and the paired difference to ToMe with its standard
error over images.

    python scripts/benchmark_probe_cv.py --r 4,5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from turbo_hf import TurboConfig, turbo  # noqa: E402
from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.backbone import benchmark_metadata, load_backbone, num_tokens, plan_for  # noqa: E402
from turbo_hf.evaluation.images import gray_to_pixels  # noqa: E402
from turbo_hf.evaluation.probe import CrossValidatedProbe, extract, probe_vector  # noqa: E402
from turbo_hf.evaluation.tables import markdown_table, metadata_markdown, save  # noqa: E402

SETTINGS = {
    "random": {"mode": "random", "seed": 0},
    "tome": {"mode": "tome"},
    "turbo (default, = calibrated)": {"mode": "turbo"},
    "turbo-paper": {"mode": "turbo", "alpha_scale": "raw", "alpha": 150.0},
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: the real DINOv2-S/14)")
    parser.add_argument("--r", type=comma_type(int), default=[4, 5], help="comma-separated r values")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=None, help="the first N digits only (a quick check)")
    parser.add_argument("--out", default="benchmarks")
    args = parser.parse_args(argv)
    r_values = args.r
    from sklearn.datasets import load_digits

    model, folder = load_backbone(args.model)
    digits = load_digits()
    images, labels = digits.images[: args.max_images], digits.target[: args.max_images]
    pixels = gray_to_pixels(images, args.image_size, scale=16.0)

    def features() -> np.ndarray:
        return probe_vector(extract(model, pixels, args.batch_size))

    stock = features()
    probe = CrossValidatedProbe(stock, labels, args.folds)
    correct = probe.correct

    results = {"stock": {"accuracy": float(correct(stock).mean() * 100)}}
    tokens = num_tokens(model, args.image_size)
    for r in r_values:
        hits = {}
        for name, settings in SETTINGS.items():
            config = TurboConfig(r=r, **settings)
            with turbo(model, config):
                hits[name] = correct(features())
        limit = 1 / plan_for(model, TurboConfig(r=r), tokens)["flops_fraction"]
        for name, hit in hits.items():
            diff = hit.astype(float) - hits["tome"].astype(float)
            results[f"{name} r={r}"] = {
                "r": r,
                "speed_limit": limit,
                "accuracy": float(hit.mean() * 100),
                "minus_tome": float(diff.mean() * 100),
                "minus_tome_se": float(diff.std(ddof=1) / np.sqrt(len(diff)) * 100),
            }

    rows = [["stock", "-", f"{results['stock']['accuracy']:.2f}", "-"]]
    for key, row in results.items():
        if key != "stock":
            rows.append([key, f"{row['speed_limit']:.2f}x", f"{row['accuracy']:.2f}",
                         f"{row['minus_tome']:+.2f} ± {row['minus_tome_se']:.2f}"])
    table = markdown_table(["setting", "speed limit", "accuracy %", "minus ToMe (± s.e.)"], rows)
    meta = benchmark_metadata(folder, image_size=args.image_size, folds=args.folds, r=r_values, images=len(labels))
    markdown = (
        f"# Digits linear probe, {args.folds}-fold cross-validation ({len(labels)} test images)\n\n"
        f"{table}\n\n{metadata_markdown(meta)}\n"
    )
    print(markdown)
    save(args.out, "probe_cv_digits", {"metadata": meta, "results": results}, markdown)
    return results


if __name__ == "__main__":
    main()
