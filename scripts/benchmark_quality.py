"""Quality of Turbo / ToMe / semantic / random token reduction on the real DINOv2-S/14.

(a) Linear probe at 112 px (65 tokens) on sklearn `load_digits` and scikit-image `lfw_subset` (faces vs
    non-faces). One logistic regression per dataset is trained on the STOCK model's features of a fixed
    stratified 70/30 split (features: [CLS] output joined with the mean of the unmerged patch tokens,
    standardised with a scaler fitted on the stock training features); each setting only recomputes the
    test features, and its test accuracy is reported (so this measures how well the reduced model keeps the
    stock feature space, with no retraining).
(b) Fidelity at 224 px (257 tokens): the mean cosine similarity between the final [CLS] (pooler_output) of
    each setting and of the stock model on real colour photos (scikit-image and sklearn sample images).

The "calibrated" setting runs `turbo_hf.calibrate` on 32 unlabeled images that are in no evaluation set:
random crops of scikit-image's grayscale photos/textures (camera, moon, coins, brick, grass, gravel, text,
clock), digits TRAINING images and lfw_subset TRAINING images (see `calibration_images`).

    PYTHONPATH=src python scripts/benchmark_quality.py
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

from turbo_hf import TurboConfig, calibrate  # noqa: E402
from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.backbone import (  # noqa: E402
    benchmark_metadata,
    load_backbone,
    num_tokens,
    plan_for,
    r_for_speed_limit,
)
from turbo_hf.evaluation.probe import extract  # noqa: E402
from turbo_hf.evaluation.quality import (  # noqa: E402
    SETTINGS,
    calibration_images,
    describe,
    fit_stock_probes,
    photo_settings,
    photos,
    probe_datasets,
    probe_settings,
)
from turbo_hf.evaluation.quality_report import best_against_tome, calibration_section, photo_table, probe_table  # noqa: E402
from turbo_hf.evaluation.tables import Stopwatch, metadata_markdown, save  # noqa: E402

# name -> TurboConfig fields (without r). "stock" and "calibrated" are handled separately.
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model folder (default: the real DINOv2-S/14)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--r-probe", type=comma_type(int), default=[4, 5], help="r values of the 112 px probe")
    parser.add_argument("--probe-size", type=int, default=112)
    parser.add_argument("--photo-size", type=int, default=224)
    parser.add_argument("--photo-targets", type=comma_type(float), default=[1.6, 1.9],
                        help="speed limits for which r is chosen at the photo size (closest constant r)")
    parser.add_argument("--r-photo", type=comma_type(int), default=None, help="r values at the photo size (overrides targets)")
    parser.add_argument("--settings", type=comma_type(str), default=list(SETTINGS) + ["calibrated"],
                        help="settings to evaluate (stock is always run): " + ",".join(SETTINGS) + ",calibrated")
    parser.add_argument("--random-seeds", type=comma_type(int), default=[0, 1, 2],
                        help="seeds of the random mode; the mean over them is reported too")
    parser.add_argument("--calib-images", type=int, default=32, help="unlabeled images for calibrate()")
    parser.add_argument("--batch-size", type=int, default=32, help="batch at the probe size")
    parser.add_argument("--photo-batch-size", type=int, default=16, help="batch at the photo size")
    parser.add_argument("--skip-photos", action="store_true", help="skip part (b)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--name", default="quality_dinov2")
    return parser.parse_args(argv)


def main(argv=None) -> dict:  # noqa: C901 (a linear script)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.settings if s not in SETTINGS and s != "calibrated"]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {list(SETTINGS) + ['calibrated']}")
    watch = Stopwatch()
    model, folder = load_backbone(args.model, args.attn)
    meta = benchmark_metadata(folder, **vars(args))  # at the start: the load average describes the run's beginning
    print(f"torch threads: {torch.get_num_threads()}")

    # ---------------------------------------------------------------- (a) linear probe at the probe size
    t0 = time.perf_counter()
    probe_tokens = num_tokens(model, args.probe_size)
    probe_limits = {r: 1 / plan_for(model, TurboConfig(r=r), probe_tokens)["flops_fraction"] for r in args.r_probe}
    probe_final = {r: plan_for(model, TurboConfig(r=r), probe_tokens)["token_counts"][-1] for r in args.r_probe}
    for r in args.r_probe:
        print(f"probe {args.probe_size} px ({probe_tokens} tokens): r={r} -> {probe_final[r]} final tokens, "
              f"speed limit {probe_limits[r]:.3f}x")
    data = probe_datasets(args.probe_size)
    calib_names, calib_probe = calibration_images(args.probe_size, data, args.calib_images)
    watch.lap("data", t0)

    t0 = time.perf_counter()
    stock = fit_stock_probes(model, data, args.batch_size)
    stock_test, classifiers, stock_acc = stock
    watch.lap("probe_stock", t0)

    t0 = time.perf_counter()
    calibrated_probe, calibration_tables = {}, {}
    if "calibrated" in args.settings:
        for r in args.r_probe:
            result = calibrate(model, calib_probe, r=r, batch_size=args.batch_size)
            calibrated_probe[r] = result.config
            calibration_tables[f"probe r={r}"] = {"chosen": describe(result.config), "fidelity": result.fidelity,
                                                   "table": result.table}
            print(f"calibrated ({args.probe_size} px, r={r}): {describe(result.config)} "
                  f"(fidelity {result.fidelity:.4f})")
    watch.lap("probe_calibration", t0)

    t0 = time.perf_counter()
    probe_rows, random_runs = probe_settings(model, data, args.settings, args.r_probe, args.random_seeds,
                                             args.batch_size, stock, calibrated_probe)
    watch.lap("probe_settings", t0)

    # ---------------------------------------------------------------- (b) fidelity on photos
    photo_result = None
    if not args.skip_photos:
        t0 = time.perf_counter()
        photo_tokens = num_tokens(model, args.photo_size)
        r_photo = args.r_photo or [r_for_speed_limit(model, photo_tokens, target) for target in args.photo_targets]
        photo_limits = {r: 1 / plan_for(model, TurboConfig(r=r), photo_tokens)["flops_fraction"] for r in r_photo}
        photo_final = {r: plan_for(model, TurboConfig(r=r), photo_tokens)["token_counts"][-1] for r in r_photo}
        for r in r_photo:
            print(f"photos {args.photo_size} px ({photo_tokens} tokens): r={r} -> {photo_final[r]} final tokens, "
                  f"speed limit {photo_limits[r]:.3f}x")
        photo_names, photo_pixels = photos(args.photo_size)
        _, calib_photo = calibration_images(args.photo_size, data, args.calib_images)
        stock_photo = extract(model, photo_pixels, args.photo_batch_size, desc="stock photos")
        calibrated_photo = {}
        if "calibrated" in args.settings:
            for r in r_photo:
                result = calibrate(model, calib_photo, r=r, batch_size=args.photo_batch_size)
                calibrated_photo[r] = result.config
                calibration_tables[f"photo r={r}"] = {"chosen": describe(result.config),
                                                      "fidelity": result.fidelity, "table": result.table}
                print(f"calibrated ({args.photo_size} px, r={r}): {describe(result.config)} "
                      f"(fidelity {result.fidelity:.4f})")
        photo_rows = photo_settings(model, photo_pixels, stock_photo, args.settings, r_photo, args.random_seeds,
                                    args.photo_batch_size, calibrated_photo)
        photo_result = {
            "image_size": args.photo_size,
            "num_tokens": photo_tokens,
            "r": r_photo,
            "speed_limit": {r: photo_limits[r] for r in r_photo},
            "final_tokens": photo_final,
            "images": photo_names,
            "calibration_images": calib_names,
            "rows": photo_rows,
        }
        watch.lap("photos", t0)

    # ---------------------------------------------------------------- output
    runtime = watch.total()
    meta["runtime_s"] = runtime
    meta["phases_s"] = watch.phases

    probe_tab = probe_table(probe_rows, list(data), args.r_probe)
    n_test = {name: len(entry["y_test"]) for name, entry in data.items()}
    n_train = {name: len(entry["y_train"]) for name, entry in data.items()}
    probe_notes = (
        f"Linear probe at {args.probe_size} px ({probe_tokens} tokens). Speed limits (1/flops_fraction): "
        + ", ".join(f"r={r}: {probe_limits[r]:.2f}x ({probe_final[r]} final tokens)" for r in args.r_probe)
        + ". Train/test sizes: " + ", ".join(f"{k} {n_train[k]}/{n_test[k]}" for k in data)
        + ". The classifier is trained once on stock features; only test features change. "
        "(+g/-l): test images this setting classifies correctly and ToMe does not (g), and the reverse (l), "
        "at the same r. [CLS] cos: mean cosine of the final [CLS] to the stock model over both test sets "
        "(unweighted mean of the two datasets)."
    )
    sections = ["# Quality: token reduction on DINOv2-S/14", "## (a) Linear probe", probe_notes, probe_tab]

    if calibration_tables:
        sections += ["### Calibration"] + calibration_section(calibration_tables, calib_names)

    if photo_result:
        r_photo = photo_result["r"]
        photo_tab = photo_table(photo_result)
        notes = (
            f"Cosine similarity of the final [CLS] (pooler_output) to the stock model at {args.photo_size} px "
            f"({photo_result['num_tokens']} tokens) on {len(photo_result['images'])} photos "
            f"({', '.join(photo_result['images'])}). Speed limits: "
            + ", ".join(f"r={r}: {photo_result['speed_limit'][r]:.2f}x ({photo_result['final_tokens'][r]} final "
                        f"tokens)" for r in r_photo) + "."
        )
        notes += (" The calibrated setting is calibrated at this size on the same 32 calibration sources "
                  "(rendered at this size), none of them among these photos.")
        sections += ["## (b) [CLS] fidelity on photos", notes, photo_tab]

    summary = best_against_tome(probe_rows, list(data), args.r_probe, n_test, photo_result)
    if summary:
        sections += ["## Best Turbo variant against ToMe", "\n".join(summary)]

    sections += ["## Run", metadata_markdown(meta) + f"\n- total runtime: {runtime:.0f} s; phases (s): "
                 + ", ".join(f"{k} {v:.0f}" for k, v in watch.phases.items())]
    markdown = "\n\n".join(sections)

    def jsonable_probe(rows):
        return {
            setting: {f"{name} r={r}": {k: v for k, v in row.items() if k != "pred"}
                      for (name, r), row in cells.items()}
            for setting, cells in rows.items()
        }

    payload = {
        "metadata": meta,
        "probe": {
            "image_size": args.probe_size,
            "num_tokens": probe_tokens,
            "r": args.r_probe,
            "speed_limit": probe_limits,
            "final_tokens": probe_final,
            "train_size": n_train,
            "test_size": n_test,
            "rows": jsonable_probe(probe_rows),
            "random_runs": {f"{name} r={r}": [{k: v for k, v in run.items() if k != "pred"} for run in runs]
                            for (name, r), runs in random_runs.items()},
        },
        "calibration": {"images": calib_names, **calibration_tables},
        "settings": {name: SETTINGS[name] for name in args.settings if name in SETTINGS},
        "photos": photo_result,
    }
    print()
    print(markdown)
    json_path, md_path = save(args.out, args.name, payload, markdown)
    print(f"\nsaved {json_path} and {md_path}  (total {runtime:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
