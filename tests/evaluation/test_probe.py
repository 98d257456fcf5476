"""The benchmarks' linear probe: features of patched models, fitting, splits and cross-validation."""

import numpy as np
import pytest
import torch

from turbo_hf import TurboConfig, turbo
from turbo_hf.evaluation.probe import (
    CrossValidatedProbe,
    extract,
    fit_probe,
    probe_vector,
    split_features,
    stratified_split,
)
from turbo_hf.testing.tiny_models import build, inputs


def test_features_of_a_merged_model_are_the_unmerged_patch_mean():
    model = build("dinov2")
    pixels = torch.cat([inputs("dinov2")["pixel_values"]] * 3)
    stock = extract(model, pixels, batch_size=2)
    assert stock["cls"].shape == stock["patch_mean"].shape == (6, model.config.hidden_size)
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(stock["patch_mean"], hidden[:, 1:].mean(dim=1))
    with turbo(model, TurboConfig(r=3, mode="tome")):
        merged = extract(model, pixels, batch_size=4)  # batches of 4 and 2 give the one-batch result
        with torch.no_grad():
            output = model(pixel_values=pixels)
        cls, mean = split_features(output)
    assert output.last_hidden_state.shape[1] < hidden.shape[1]  # tokens were merged ...
    torch.testing.assert_close(merged["patch_mean"], mean, rtol=1e-5, atol=1e-5)  # ... and unmerged for the mean
    torch.testing.assert_close(merged["cls"], cls, rtol=1e-5, atol=1e-5)
    assert probe_vector(merged).shape == (6, 2 * model.config.hidden_size)


def test_probe_fits_separable_features_and_refuses_a_single_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    features = np.eye(3)[labels] * 5 + rng.normal(scale=0.1, size=(60, 3))
    probe = fit_probe(features, labels)
    assert (probe.predict(features) == labels).all()
    with pytest.raises(ValueError, match="at least two classes"):
        fit_probe(features, np.zeros(60, dtype=int))


def test_stratified_split_keeps_class_proportions_and_falls_back_for_tiny_classes():
    labels = np.array([0] * 70 + [1] * 30)
    train, test = stratified_split(labels, train_size=0.7, seed=0)
    assert sorted(np.r_[train, test].tolist()) == list(range(100))
    assert (labels[test] == 1).sum() == 9 and (labels[test] == 0).sum() == 21
    assert np.array_equal(stratified_split(labels, 0.7, seed=0)[0], train)  # seeded
    train, test = stratified_split(np.array([0, 0, 0, 1]), train_size=0.5)  # class 1 has one image
    assert len(train) == len(test) == 2
    with pytest.raises(ValueError, match="train_size"):
        stratified_split(labels, train_size=1.0)


def test_cross_validation_tests_every_image_once_with_a_probe_that_never_saw_it():
    labels = np.repeat([0, 1], 10)
    features = np.stack([labels, 1 - labels], axis=1).astype(float)
    cv = CrossValidatedProbe(features, labels, folds=5)
    held_out = np.concatenate([test for _, test in cv.folds])
    assert sorted(held_out.tolist()) == list(range(20))
    assert cv.correct(features).all()
    # features that swap the classes are all wrong: the probes were fitted on the stock features only
    assert not cv.correct(features[:, ::-1]).any()
