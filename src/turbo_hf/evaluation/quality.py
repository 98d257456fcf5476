"""The quality benchmark of `scripts/benchmark_quality.py`: its settings, its data (sklearn digits,
scikit-image `lfw_subset` and photos, calibration images in no evaluation set), the linear probe of every
setting against probes fitted on the stock features, and the [CLS] fidelity on photos.

scikit-learn and scikit-image (the `examples` extra) are imported when the data is built.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.patching import turbo
from .images import gray_to_pixels, normalize, random_crop, resize_center_crop, to_rgb01
from .probe import extract, fit_probe, probe_vector, stratified_split

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


def fit_stock_probes(model, data: dict, batch_size: int) -> tuple[dict, dict, dict]:
    """(stock test features, fitted probe, stock accuracy with predictions) per dataset of `probe_datasets`."""
    stock_test, classifiers, stock_acc = {}, {}, {}
    for name, entry in data.items():
        train = extract(model, entry["x_train"], batch_size, desc=f"stock {name} train")
        test = extract(model, entry["x_test"], batch_size, desc=f"stock {name} test")
        classifiers[name] = fit_probe(probe_vector(train), entry["y_train"])
        stock_test[name] = test
        pred = classifiers[name].predict(probe_vector(test))
        stock_acc[name] = {"accuracy": float((pred == entry["y_test"]).mean()),
                           "correct": int((pred == entry["y_test"]).sum()), "total": len(pred), "pred": pred}
        print(f"stock {name}: train {len(entry['y_train'])}, test {len(entry['y_test'])}, "
              f"test accuracy {stock_acc[name]['accuracy']:.4f}")
    return stock_test, classifiers, stock_acc


def _jobs(settings, random_seeds, r_values) -> list[tuple]:
    """(setting, seed, r) of every run: the random mode once per seed, the others once."""
    return [(setting, seed, r) for setting in settings
            for seed in (random_seeds if setting == "random" else [None]) for r in r_values]


def probe_settings(model, data: dict, settings, r_values, random_seeds, batch_size: int, stock: tuple,
                   calibrated_probe: dict) -> tuple[dict, dict]:
    """(rows, random runs): test accuracy and [CLS] fidelity of every setting at every r, with the paired
    gains / losses against ToMe and the mean over the random seeds; `stock` is `fit_stock_probes`'s result."""
    from tqdm.auto import tqdm

    stock_test, classifiers, stock_acc = stock
    probe_rows: dict[str, dict] = {"stock": {}}
    for name in data:
        for r in r_values:
            probe_rows["stock"][(name, r)] = {**{k: v for k, v in stock_acc[name].items() if k != "pred"},
                                              "fidelity_cls": 1.0}
    jobs = _jobs(settings, random_seeds, r_values)
    random_runs: dict[tuple, list[dict]] = {}
    for setting, seed, r in tqdm(jobs, desc="probe settings"):
        config = setting_config(setting, r, calibrated_probe, seed)
        with turbo(model, config):
            for name, entry in data.items():
                feats = extract(model, entry["x_test"], batch_size)
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
                    if seed != random_seeds[0]:
                        continue
                probe_rows.setdefault(setting, {})[(name, r)] = row
    if "random" in settings and len(random_seeds) > 1:
        key = f"random (mean of {len(random_seeds)} seeds)"
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
    return probe_rows, random_runs


def photo_settings(model, photo_pixels: torch.Tensor, stock_photo: dict, settings, r_photo, random_seeds,
                   batch_size: int, calibrated_photo: dict) -> dict:
    """Mean and minimum cosine of the final [CLS] (pooler output) to the stock model's, per setting and r."""
    from tqdm.auto import tqdm

    photo_rows: dict[str, dict] = {"stock": {r: {"cos_pooler": 1.0, "min_cos_pooler": 1.0} for r in r_photo}}
    jobs = _jobs(settings, random_seeds, r_photo)
    random_photo: dict[int, list[float]] = {}
    for setting, seed, r in tqdm(jobs, desc="photo settings"):
        config = setting_config(setting, r, calibrated_photo, seed)
        with turbo(model, config):
            feats = extract(model, photo_pixels, batch_size)
        per_image = F.cosine_similarity(stock_photo["pooler"], feats["pooler"], dim=-1)
        row = {"cos_pooler": per_image.mean().item(), "min_cos_pooler": per_image.min().item(),
               "per_image": [round(v, 5) for v in per_image.tolist()]}
        if setting == "random":
            random_photo.setdefault(r, []).append(row["cos_pooler"])
            if seed != random_seeds[0]:
                continue
        photo_rows.setdefault(setting, {})[r] = row
    if "random" in settings and len(random_seeds) > 1:
        photo_rows[f"random (mean of {len(random_seeds)} seeds)"] = {
            r: {"cos_pooler": statistics.mean(v), "per_seed": v} for r, v in random_photo.items()
        }
        photo_rows = _after(photo_rows, "random", f"random (mean of {len(random_seeds)} seeds)")
    return photo_rows
