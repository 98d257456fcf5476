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
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from turbo_hf import TurboConfig, calibrate, turbo  # noqa: E402
from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.backbone import (  # noqa: E402
    benchmark_metadata,
    load_backbone,
    num_tokens,
    plan_for,
    r_for_speed_limit,
)
from turbo_hf.evaluation.images import gray_to_pixels, normalize, random_crop, resize_center_crop, to_rgb01  # noqa: E402
from turbo_hf.evaluation.probe import extract, fit_probe, probe_vector, stratified_split  # noqa: E402
from turbo_hf.evaluation.tables import Stopwatch, markdown_table, metadata_markdown, save  # noqa: E402

# name -> TurboConfig fields (without r). "stock" and "calibrated" are handled separately.
SETTINGS: dict[str, dict] = {
    "random": {"mode": "random", "seed": 0},
    "tome": {"mode": "tome"},
    "semantic": {"mode": "semantic"},
    "turbo-paper": {"mode": "turbo", "alpha_scale": "raw", "alpha": 150.0},
    "turbo-length-0.02": {"mode": "turbo", "alpha_scale": "length", "alpha": 0.02},
    "turbo-length-0.05": {"mode": "turbo", "alpha_scale": "length", "alpha": 0.05},
    "turbo-length-0.1": {"mode": "turbo", "alpha_scale": "length", "alpha": 0.1},
    "turbo-length-0.2": {"mode": "turbo", "alpha_scale": "length", "alpha": 0.2},
    "turbo-length-0.5": {"mode": "turbo", "alpha_scale": "length", "alpha": 0.5},
    "turbo-rank-0.1": {"mode": "turbo", "alpha_scale": "rank", "alpha": 0.1},
    "turbo-rank-0.25": {"mode": "turbo", "alpha_scale": "rank", "alpha": 0.25},
    "turbo-zscore-0.1": {"mode": "turbo", "alpha_scale": "zscore", "alpha": 0.1},
    "turbo-zscore-0.25": {"mode": "turbo", "alpha_scale": "zscore", "alpha": 0.25},
    "turbo-late": {"mode": "turbo", "alpha_scale": "length", "alpha": 0.1, "semantic_start_layer": 6},
}

PHOTOS_SKIMAGE = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "colorwheel", "motorcycle_left"]
CALIBRATION_SKIMAGE = ["camera", "moon", "coins", "brick", "grass", "gravel", "text", "clock"]


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


# ----------------------------------------------------------------------------------------------- data


def probe_datasets(size: int) -> dict[str, dict]:
    """digits and lfw_subset as pixel values at `size` px with a fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from skimage.data import lfw_subset  # noqa: PLC0415

    digits = load_digits()
    lfw = lfw_subset()
    raw = {
        "digits": (digits.images, digits.target, 16.0),
        "lfw": (lfw, np.r_[np.ones(100, dtype=int), np.zeros(100, dtype=int)], 1.0),
    }
    data = {}
    for name, (images, labels, scale) in raw.items():
        train_idx, test_idx = stratified_split(labels, train_size=0.7, seed=0)
        pixels = gray_to_pixels(images, size, scale)
        data[name] = {
            "train_idx": train_idx,
            "test_idx": test_idx,
            "x_train": pixels[train_idx],
            "x_test": pixels[test_idx],
            "y_train": labels[train_idx],
            "y_test": labels[test_idx],
            "raw": images,
            "scale": scale,
        }
    return data


def photos(size: int) -> tuple[list[str], torch.Tensor]:
    """Colour photos from scikit-image and sklearn, shortest edge resized to `size`, centre-cropped."""
    import skimage.data as skd  # noqa: PLC0415

    names, images = [], []
    for name in PHOTOS_SKIMAGE:
        if name == "motorcycle_left":
            image = skd.stereo_motorcycle()[0]
        else:
            image = getattr(skd, name)()
        names.append(name)
        images.append(resize_center_crop(to_rgb01(image), size))
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    for filename, image in zip(sample.filenames, sample.images):
        names.append(filename.rsplit("/", 1)[-1].split(".")[0])
        images.append(resize_center_crop(to_rgb01(image), size))
    return names, normalize(torch.stack(images))


def calibration_images(size: int, data: dict, count: int = 32, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """`count` unlabeled images in no evaluation set: half random crops of scikit-image grayscale
    photos/textures (CALIBRATION_SKIMAGE, round-robin), a quarter digits and a quarter lfw_subset TRAINING
    images (the first ones of each training split)."""
    import skimage.data as skd  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    n_crops = count // 2
    n_digits = (count - n_crops) // 2
    n_lfw = count - n_crops - n_digits
    names, crops = [], []
    sources = {name: to_rgb01(getattr(skd, name)()) for name in CALIBRATION_SKIMAGE}
    for i in range(n_crops):
        name = CALIBRATION_SKIMAGE[i % len(CALIBRATION_SKIMAGE)]
        crops.append(random_crop(sources[name], size, rng))
        names.append(f"crop:{name}")
    parts = [normalize(torch.stack(crops))] if crops else []
    for dataset, n in (("digits", n_digits), ("lfw", n_lfw)):
        entry = data[dataset]
        idx = entry["train_idx"][:n]
        parts.append(gray_to_pixels(entry["raw"][idx], size, entry["scale"]))
        names += [f"{dataset}-train:{i}" for i in idx]
    return names, torch.cat(parts)


# -------------------------------------------------------------------------------------------- running


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=-1).mean().item()


def setting_config(name: str, r: int, calibrated: dict[int, TurboConfig], seed: int | None = None) -> TurboConfig:
    if name == "calibrated":
        return calibrated[r]
    fields = dict(SETTINGS[name])
    if seed is not None:
        fields["seed"] = seed
    return TurboConfig(r=r, **fields)


def describe(config: TurboConfig) -> str:
    s = config.settings()
    if s["mode"] != "turbo":
        return f"mode={s['mode']}"
    return (f"mode=turbo, alpha_scale={s['alpha_scale']}, alpha={s['alpha']}, "
            f"semantic_start_layer={s['semantic_start_layer']}")


def _after(rows: dict, anchor: str, key: str) -> dict:
    """`rows` with entry `key` moved right after `anchor` (for the table order)."""
    order = [k for k in rows if k != key]
    order.insert(order.index(anchor) + 1, key)
    return {k: rows[k] for k in order}


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
    stock_test, classifiers, stock_acc = {}, {}, {}
    for name, entry in data.items():
        train = extract(model, entry["x_train"], args.batch_size, desc=f"stock {name} train")
        test = extract(model, entry["x_test"], args.batch_size, desc=f"stock {name} test")
        classifiers[name] = fit_probe(probe_vector(train), entry["y_train"])
        stock_test[name] = test
        pred = classifiers[name].predict(probe_vector(test))
        stock_acc[name] = {"accuracy": float((pred == entry["y_test"]).mean()),
                           "correct": int((pred == entry["y_test"]).sum()), "total": len(pred), "pred": pred}
        print(f"stock {name}: train {len(entry['y_train'])}, test {len(entry['y_test'])}, "
              f"test accuracy {stock_acc[name]['accuracy']:.4f}")
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
    probe_rows: dict[str, dict] = {"stock": {}}
    for name in data:
        for r in args.r_probe:
            probe_rows["stock"][(name, r)] = {**{k: v for k, v in stock_acc[name].items() if k != "pred"},
                                              "fidelity_cls": 1.0}
    jobs = []
    for setting in args.settings:
        seeds = args.random_seeds if setting == "random" else [None]
        for seed in seeds:
            for r in args.r_probe:
                jobs.append((setting, seed, r))
    random_runs: dict[tuple, list[dict]] = {}
    for setting, seed, r in tqdm(jobs, desc="probe settings"):
        config = setting_config(setting, r, calibrated_probe, seed)
        with turbo(model, config):
            for name, entry in data.items():
                feats = extract(model, entry["x_test"], args.batch_size)
                pred = classifiers[name].predict(probe_vector(feats))
                correct = pred == entry["y_test"]
                row = {
                    "accuracy": float(correct.mean()),
                    "correct": int(correct.sum()),
                    "total": len(pred),
                    "fidelity_cls": cosine(stock_test[name]["cls"], feats["cls"]),
                    "pred": pred,
                }
                if setting == "random":
                    random_runs.setdefault((name, r), []).append({"seed": seed, **row})
                    if seed != args.random_seeds[0]:
                        continue
                probe_rows.setdefault(setting, {})[(name, r)] = row
    if "random" in args.settings and len(args.random_seeds) > 1:
        key = f"random (mean of {len(args.random_seeds)} seeds)"
        probe_rows[key] = {}
        for (name, r), runs in random_runs.items():
            probe_rows[key][(name, r)] = {
                "accuracy": statistics.mean(run["accuracy"] for run in runs),
                "accuracy_std": statistics.pstdev(run["accuracy"] for run in runs),
                "fidelity_cls": statistics.mean(run["fidelity_cls"] for run in runs),
                "seeds": [run["seed"] for run in runs],
                "per_seed_accuracy": [run["accuracy"] for run in runs],
            }
        probe_rows = _after(probe_rows, "random", key)
    # paired comparison with ToMe: test images a setting gets right and ToMe wrong (+) and the reverse (-)
    if "tome" in probe_rows:
        for setting, cells in probe_rows.items():
            for key, row in cells.items():
                if "pred" not in row:
                    continue
                name, _ = key
                y = data[name]["y_test"]
                tome_ok = probe_rows["tome"][key]["pred"] == y if "pred" in probe_rows["tome"][key] else None
                if tome_ok is None:
                    continue
                ok = row["pred"] == y
                row["vs_tome"] = {"gains": int((ok & ~tome_ok).sum()), "losses": int((~ok & tome_ok).sum())}
        for (name, r), row in probe_rows["stock"].items():
            y = data[name]["y_test"]
            ok, tome_ok = stock_acc[name]["pred"] == y, probe_rows["tome"][(name, r)]["pred"] == y
            row["vs_tome"] = {"gains": int((ok & ~tome_ok).sum()), "losses": int((~ok & tome_ok).sum())}
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
        photo_rows: dict[str, dict] = {"stock": {r: {"cos_pooler": 1.0, "min_cos_pooler": 1.0} for r in r_photo}}
        jobs = []
        for setting in args.settings:
            seeds = args.random_seeds if setting == "random" else [None]
            for seed in seeds:
                for r in r_photo:
                    jobs.append((setting, seed, r))
        random_photo: dict[int, list[float]] = {}
        for setting, seed, r in tqdm(jobs, desc="photo settings"):
            config = setting_config(setting, r, calibrated_photo, seed)
            with turbo(model, config):
                feats = extract(model, photo_pixels, args.photo_batch_size)
            per_image = F.cosine_similarity(stock_photo["pooler"], feats["pooler"], dim=-1)
            row = {"cos_pooler": per_image.mean().item(), "min_cos_pooler": per_image.min().item(),
                   "per_image": [round(v, 5) for v in per_image.tolist()]}
            if setting == "random":
                random_photo.setdefault(r, []).append(row["cos_pooler"])
                if seed != args.random_seeds[0]:
                    continue
            photo_rows.setdefault(setting, {})[r] = row
        if "random" in args.settings and len(args.random_seeds) > 1:
            photo_rows[f"random (mean of {len(args.random_seeds)} seeds)"] = {
                r: {"cos_pooler": statistics.mean(v), "per_seed": v} for r, v in random_photo.items()
            }
            photo_rows = _after(photo_rows, "random", f"random (mean of {len(args.random_seeds)} seeds)")
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

    def acc_cell(row):
        if row is None:
            return "-"
        text = f"{100 * row['accuracy']:.2f}"
        if "accuracy_std" in row:
            text += f" ± {100 * row['accuracy_std']:.2f}"
        if "vs_tome" in row:
            text += f" (+{row['vs_tome']['gains']}/-{row['vs_tome']['losses']})"
        return text

    headers = ["setting"]
    for name in data:
        for r in args.r_probe:
            headers.append(f"{name} r={r} acc %")
    for r in args.r_probe:
        headers.append(f"[CLS] cos r={r}")
    table_rows = []
    for setting, cells in probe_rows.items():
        row = [setting]
        for name in data:
            for r in args.r_probe:
                row.append(acc_cell(cells.get((name, r))))
        for r in args.r_probe:
            values = [cells[(name, r)]["fidelity_cls"] for name in data if (name, r) in cells]
            row.append(f"{statistics.mean(values):.4f}" if values else "-")
        table_rows.append(row)
    probe_table = markdown_table(headers, table_rows)
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
    sections = ["# Quality: token reduction on DINOv2-S/14", "## (a) Linear probe", probe_notes, probe_table]

    if calibration_tables:
        lines = []
        for key, value in calibration_tables.items():
            top = ", ".join(
                f"{'/'.join(str(v) for k, v in row.items() if k != 'fidelity')}={row['fidelity']:.4f}"
                for row in value["table"][:4]
            )
            lines.append(f"- {key}: chose **{value['chosen']}** (fidelity {value['fidelity']:.4f}); top 4: {top}")
        tome_note = []
        for key, value in calibration_tables.items():
            tome_row = next((row for row in value["table"] if row.get("mode") == "tome"), None)
            if tome_row:
                tome_note.append(f"{key}: ToMe fidelity {tome_row['fidelity']:.4f}")
        sections += ["### Calibration", "Calibration images (unlabeled, in no evaluation set): "
                     + ", ".join(sorted(set(n.split(":")[0] + (":" + n.split(":")[1] if n.startswith("crop") else "")
                                         for n in calib_names))) + f" ({len(calib_names)} images).",
                     "\n".join(lines), "; ".join(tome_note)]

    if photo_result:
        r_photo = photo_result["r"]
        headers = ["setting"] + [f"mean cos r={r}" for r in r_photo] + [f"min cos r={r}" for r in r_photo]
        rows = []
        for setting, cells in photo_result["rows"].items():
            rows.append([setting] + [f"{cells[r]['cos_pooler']:.4f}" if r in cells else "-" for r in r_photo]
                        + [f"{cells[r]['min_cos_pooler']:.4f}" if r in cells and "min_cos_pooler" in cells[r]
                           else "-" for r in r_photo])
        photo_table = markdown_table(headers, rows)
        notes = (
            f"Cosine similarity of the final [CLS] (pooler_output) to the stock model at {args.photo_size} px "
            f"({photo_result['num_tokens']} tokens) on {len(photo_result['images'])} photos "
            f"({', '.join(photo_result['images'])}). Speed limits: "
            + ", ".join(f"r={r}: {photo_result['speed_limit'][r]:.2f}x ({photo_result['final_tokens'][r]} final "
                        f"tokens)" for r in r_photo) + "."
        )
        notes += (" The calibrated setting is calibrated at this size on the same 32 calibration sources "
                  "(rendered at this size), none of them among these photos.")
        sections += ["## (b) [CLS] fidelity on photos", notes, photo_table]

    # best Turbo variant per column, against ToMe
    summary = []
    turbo_names = [s for s in probe_rows if s.startswith("turbo-")]
    if "tome" in probe_rows and turbo_names:
        for name in data:
            for r in args.r_probe:
                best = max(turbo_names, key=lambda s: probe_rows[s][(name, r)]["accuracy"])
                acc, tome = probe_rows[best][(name, r)]["accuracy"], probe_rows["tome"][(name, r)]["accuracy"]
                ties = [s for s in turbo_names if probe_rows[s][(name, r)]["accuracy"] == acc]
                summary.append(f"- {name} r={r}: best Turbo {', '.join(ties)} {100 * acc:.2f}% vs ToMe "
                               f"{100 * tome:.2f}% ({100 * (acc - tome):+.2f} points, "
                               f"{round((acc - tome) * n_test[name]):+d} test images of {n_test[name]})")
    if photo_result and "tome" in photo_result["rows"]:
        names = [s for s in photo_result["rows"] if s.startswith("turbo-")]
        for r in photo_result["r"]:
            if names:
                best = max(names, key=lambda s: photo_result["rows"][s][r]["cos_pooler"])
                cos, tome = photo_result["rows"][best][r]["cos_pooler"], photo_result["rows"]["tome"][r]["cos_pooler"]
                summary.append(f"- photos r={r}: best Turbo {best} cos {cos:.4f} vs ToMe {tome:.4f} "
                               f"({cos - tome:+.4f})")
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
