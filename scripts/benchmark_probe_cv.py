"""Cross-validated linear probe on all of sklearn digits: a lower-noise comparison of reduction settings.

`benchmark_quality.py` tests on one 30 % split (540 images; one image is 0.19 points). Here every image is a
test image once: 5 stratified folds, a probe fitted on the STOCK features of the other folds, evaluated on
the fold's features from each setting. Reports accuracy and the paired difference to ToMe with its standard
error over images.

    python scripts/benchmark_probe_cv.py --r 4,5
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from bench_common import extract, gray_to_pixels, load_model, markdown_table, metadata, metadata_markdown, num_tokens
from bench_common import plan_for, save
from turbo_hf import TurboConfig, turbo

SETTINGS = {
    "random": {"mode": "random", "seed": 0},
    "tome": {"mode": "tome"},
    "turbo (default, = calibrated)": {"mode": "turbo"},
    "turbo-paper": {"mode": "turbo", "alpha_scale": "raw", "alpha": 150.0},
}


def features(model, pixels, batch_size) -> np.ndarray:
    out = extract(model, pixels, batch_size)
    return torch.cat([out["cls"], out["patch_mean"]], dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: the real DINOv2-S/14)")
    parser.add_argument("--r", default="4,5", help="comma-separated r values")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks")
    args = parser.parse_args()
    r_values = [int(v) for v in args.r.split(",")]

    model, folder = load_model(args.model)
    digits = load_digits()
    pixels = gray_to_pixels(digits.images, args.image_size, scale=16.0)
    labels = digits.target
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels))

    stock = features(model, pixels, args.batch_size)
    probes = []
    for train, _ in folds:
        scaler = StandardScaler().fit(stock[train])
        probes.append((scaler, LogisticRegression(max_iter=2000).fit(scaler.transform(stock[train]), labels[train])))

    def correct(feats: np.ndarray) -> np.ndarray:
        hits = np.zeros(len(labels), dtype=bool)
        for (scaler, probe), (_, test) in zip(probes, folds):
            hits[test] = probe.predict(scaler.transform(feats[test])) == labels[test]
        return hits

    results = {"stock": {"accuracy": float(correct(stock).mean() * 100)}}
    tokens = num_tokens(model, args.image_size)
    for r in r_values:
        hits = {}
        for name, settings in SETTINGS.items():
            config = TurboConfig(r=r, **settings)
            with turbo(model, config):
                hits[name] = correct(features(model, pixels, args.batch_size))
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
    meta = metadata(folder, image_size=args.image_size, folds=args.folds, r=r_values, images=len(labels))
    markdown = (
        f"# Digits linear probe, {args.folds}-fold cross-validation ({len(labels)} test images)\n\n"
        f"{table}\n\n{metadata_markdown(meta)}\n"
    )
    print(markdown)
    save(args.out, "probe_cv_digits", {"metadata": meta, "results": results}, markdown)


if __name__ == "__main__":
    main()
