"""Image classification and linear probe: stock vs random / ToMe / semantic-only / Turbo, in one run.

For every setting (the stock model, then each mode at each r) this measures
- head accuracy (top-1, top-5) when the model has a classification head whose labels match the dataset
  (by label name, or by index when the class counts are equal), and agreement with the stock predictions;
- linear-probe accuracy: a logistic regression fitted ONCE on the stock model's full-token features
  ([CLS] joined with the mean of all patch tokens; image embeddings for CLIP/SigLIP) of the probe training
  images, then applied to each setting's features of the evaluation images (no retraining);
- speed: median latency of one batch, throughput, peak memory and FLOPs, against the stock model.
Writes <out>/<name>.json, .md and .png (accuracy against measured speed-up, one line per mode).

Models: ViT, DINOv2, CLIP, SigLIP (others are refused by name; with --modes none any image model).

Data (columns `image` and `label`; rename with --image-column / --label-column):
- a folder in imagefolder layout (one sub-folder per class; train/ and test/ sub-folders become splits);
- a .jsonl file, one {"image": "relative/or/absolute/path.jpg", "label": 3} per line;
- a Hub dataset, e.g. `ILSVRC/imagenet-1k --split validation` (gated; columns image, label: the ImageNet
  ViT checkpoints' head applies), `uoft-cs/cifar10 --image-column img --split test --probe-train-split train`,
  `frgfm/imagenette --dataset-config 320px --split validation --probe-train-split train`.
The probe trains on --probe-train-split when given, else on a stratified --probe-train-fraction of the
evaluation split (the rest is evaluated, for every metric).

    python scripts/eval_classification.py --model facebook/dinov2-small --dataset DATA --modes none,tome,turbo --r 0,8,16
    accelerate launch scripts/eval_classification.py --model google/vit-base-patch16-224 --dataset ILSVRC/imagenet-1k \
        --split validation --turbo-preset vit-base-patch16-224 --r 0,8,16 --eval head
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

PROG = "eval_classification.py"


def parse_args(argv=None) -> argparse.Namespace:
    from turbo_hf.evaluation.driver import add_common_arguments

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, batch_size=32)
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--eval", choices=["auto", "head", "probe", "both"], default="auto",
                        help="head accuracy, linear probe, or both (auto: both when the model has a usable head)")
    parser.add_argument("--probe-train-split", default=None, help="split the probe trains on")
    parser.add_argument("--probe-train-fraction", type=float, default=0.5,
                        help="without --probe-train-split: share of the evaluation split the probe trains on")
    parser.add_argument("--image-size", type=int, default=None, help="resize images to this size (px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's train/test split")
    return parser.parse_args(argv)


def _class_names(data, column: str) -> list[str] | None:
    feature = data.features.get(column)
    return list(feature.names) if hasattr(feature, "names") else None


def _label_map(model, names: list[str] | None, labels: list[int]) -> dict[int, int] | None:
    """dataset label -> model label index, or None when the head's labels do not match the dataset."""
    id2label = getattr(model.config, "id2label", None) or {}
    if names:
        model_index = {str(v).lower(): int(k) for k, v in id2label.items()}
        if all(name.lower() in model_index for name in names):
            return {i: model_index[name.lower()] for i, name in enumerate(names)}
    num_classes = len(names) if names else (max(labels) + 1)
    if getattr(model.config, "num_labels", None) == num_classes:
        return {i: i for i in range(num_classes)}
    return None


def run(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from turbo_hf.evaluation.driver import (
        CLASSIFICATION_FAMILIES,
        Runner,
        UsageError,
        as_tensor,
        check_family,
        check_settings,
        evaluate_settings,
        image_preprocessor,
        load_data,
        load_model,
        interpolation_kwargs,
        require_columns,
        run_batches,
        settings_from_args,
        token_features,
        write_outputs,
    )
    from turbo_hf.evaluation.metrics import topk_accuracy
    from turbo_hf.evaluation.probe import fit_probe, stratified_split
    from turbo_hf.modeling.registry import find_adapter

    settings = settings_from_args(args)
    if any(setting.config is not None for setting in settings):  # --modes none evaluates any image model
        check_family(args.model, CLASSIFICATION_FAMILIES)  # before any data or weights load
    if not 0 < args.probe_train_fraction < 1:
        raise UsageError(f"--probe-train-fraction must be in (0, 1), got {args.probe_train_fraction}.")
    runner = Runner(cpu=args.cpu)
    with runner.main_process_first():  # downloads and dataset caches are made once
        data = load_data(args.dataset, args.split, args.dataset_config, args.where, args.max_samples, args.image_column,
                         args.label_column, args.sample_seed)
    require_columns(data, image_column=args.image_column, label_column=args.label_column)
    model = load_model(args.model, ["AutoModelForImageClassification", "AutoModel"], args.dtype, args.attn)
    check_settings(model, settings)  # an unsupported model or an impossible r fails before any work
    model.to(runner.device)
    dtype = next(model.parameters()).dtype
    labels_all = [int(v) for v in data[args.label_column]]
    names = _class_names(data, args.label_column)

    has_head = type(model).__name__.endswith("ForImageClassification")
    label_map = _label_map(model, names, labels_all) if has_head else None
    use_head = args.eval in ("head", "both") or (args.eval == "auto" and label_map is not None)
    use_probe = args.eval in ("probe", "both", "auto")
    if use_head and label_map is None:
        raise UsageError(
            f"--eval {args.eval}: the model's {getattr(model.config, 'num_labels', 0)} head labels do not match "
            f"the dataset's classes; use --eval probe."
        )
    try:
        has_cls = find_adapter(model).protect_first
    except ValueError:
        has_cls = True

    # --- which rows train the probe and which are evaluated
    probe_train = None
    test_data, test_labels = data, labels_all
    if use_probe:
        if args.probe_train_split:
            with runner.main_process_first():
                probe_train = load_data(args.dataset, args.probe_train_split, args.dataset_config, args.where,
                                        args.max_samples, args.image_column, args.label_column, args.sample_seed)
            require_columns(probe_train, image_column=args.image_column, label_column=args.label_column)
        else:
            train_idx, test_idx = stratified_split(labels_all, args.probe_train_fraction, args.seed)
            probe_train = data.select(sorted(train_idx.tolist()))
            test_data = data.select(sorted(test_idx.tolist()))
            test_labels = [labels_all[i] for i in sorted(test_idx.tolist())]

    preprocess = image_preprocessor(args.model, model, args.image_size)

    def pixels(subset, indices):
        images = subset[indices][args.image_column]
        return preprocess(images).to(runner.device, dtype)

    feature_module = model
    if has_head:
        base = getattr(model, "base_model", model)
        feature_module = base if base is not model else getattr(model, "vision_model", model)

    @torch.inference_mode()
    def forward(pixel_values):
        """(logits or None, probe features or None) of one batch under the current setting."""
        if has_head:
            extra = interpolation_kwargs(model.forward, model, pixel_values)
            captured = {}
            hook = feature_module.register_forward_hook(lambda module, inputs, output: captured.setdefault("out", output))
            try:
                output = model(pixel_values=pixel_values, **extra)
            finally:
                hook.remove()
            features = None
            if use_probe:
                if "out" not in captured:
                    captured["out"] = feature_module(
                        pixel_values=pixel_values, **interpolation_kwargs(feature_module.forward, model, pixel_values))
                features = token_features(captured["out"], has_cls)
            return output.logits, features
        if hasattr(model, "get_image_features"):
            extra = interpolation_kwargs(model.get_image_features, model, pixel_values)
            return None, as_tensor(model.get_image_features(pixel_values=pixel_values, **extra))
        extra = interpolation_kwargs(model.forward, model, pixel_values)
        return None, token_features(model(pixel_values=pixel_values, **extra), has_cls)

    def work(subset, with_logits):
        def batch(indices):
            logits, features = forward(pixels(subset, indices))
            records = []
            for row, index in enumerate(indices):
                record = {"index": index}
                if with_logits and logits is not None:
                    record["top"] = torch.topk(logits[row].float(), min(5, logits.shape[-1])).indices.tolist()
                if features is not None:
                    record["features"] = features[row].float().cpu().numpy()
                records.append(record)
            return records

        return batch

    # --- probe: fitted once, on the stock model's features
    probe = None
    if use_probe:
        y_train = np.array([int(v) for v in probe_train[args.label_column]])
        if len(set(y_train.tolist())) < 2:
            raise UsageError("The probe needs at least two classes among its training images.")
        runner.print(f"probe: stock features of {len(probe_train)} training images ...")
        train_records = run_batches(runner, len(probe_train), args.batch_size, work(probe_train, False), "probe train")
        if runner.is_main:
            probe = fit_probe(np.stack([r["features"] for r in train_records]), y_train)

    y_test = np.array(test_labels)
    stock_predictions: dict[int, int] = {}

    def evaluate(setting):
        records = run_batches(runner, len(test_data), args.batch_size, work(test_data, use_head), setting.name)
        if not runner.is_main:
            return None
        metrics = {}
        if use_head:
            mapped = np.array([label_map[int(y)] for y in y_test])
            top = [r["top"] for r in records]
            metrics["top1"] = 100.0 * float(np.mean([t[0] == y for t, y in zip(top, mapped)]))
            metrics["top5"] = 100.0 * float(np.mean([y in t[:5] for t, y in zip(top, mapped)]))
            predictions = [t[0] for t in top]
            if setting.config is None:
                stock_predictions.update(enumerate(predictions))
            metrics["agreement_with_stock"] = 100.0 * float(np.mean([p == stock_predictions[i] for i, p in enumerate(predictions)]))
        if use_probe:
            features = np.stack([r["features"] for r in records])
            scores = probe.decision_function(features)
            scores = np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores
            class_index = {c: i for i, c in enumerate(probe.classes_.tolist())}
            known = np.array([class_index.get(int(y), -1) for y in y_test])
            metrics["probe_acc"] = topk_accuracy(scores, known, 1)
        metrics["num_samples"] = len(records)
        return metrics

    timing_size = args.timing_batch_size or args.batch_size
    timing_indices = [i % len(test_data) for i in range(timing_size)]
    timing_pixels = pixels(test_data, timing_indices)
    rows = evaluate_settings(
        runner, model, settings, evaluate, lambda: forward(timing_pixels), timing_size, timing_pixels,
        args.warmup, args.repeats, flops=not args.no_flops,
    )
    metrics = []
    if use_head:
        metrics += [("top1", "top-1 accuracy (%)"), ("top5", "top-5 accuracy (%)")]
    if use_probe:
        metrics += [("probe_acc", "linear probe accuracy (%)")]
    notes = (
        f"Model `{args.model}`, dataset `{args.dataset}` ({len(test_data)} evaluated images"
        + (f", probe trained on {len(probe_train)} images" if use_probe else "")
        + "). "
        + ("Head: the model's classifier. " if use_head else "")
        + ("Probe: logistic regression fitted once on the stock model's features "
           "([CLS] + mean of the unmerged patch tokens, or the image embedding), reused for every setting." if use_probe else "")
    )
    table_metrics = metrics + ([("agreement_with_stock", "agreement with stock (%)")] if use_head else [])
    write_outputs(runner, args, "classification", rows, table_metrics,
                  "Image classification: token reduction against the stock model", notes,
                  extra={"dataset": {"name": args.dataset, "split": args.split, "evaluated": len(test_data),
                                     "probe_train": len(probe_train) if probe_train is not None else 0}},
                  plot_metrics=metrics)
    return 0


def main(argv=None) -> int:
    from turbo_hf.evaluation.driver import cli_main

    return cli_main(run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
