"""The linear probe of the benchmarks: features of a (possibly patched) vision model, a standardised logistic
regression fitted on stock features, held-out splits and cross-validation.

The probe is fitted once on the STOCK model's features; a token-reduction setting changes only the features
it is evaluated on. scikit-learn (the `eval` extra) is imported when a probe is fitted or a split is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..modeling.merging import unmerged_hidden_states


def split_features(output) -> tuple[torch.Tensor, torch.Tensor]:
    """([CLS] output, mean of the unmerged patch tokens) of a (possibly patched) model's output."""
    hidden = unmerged_hidden_states(output)
    return hidden[:, 0], hidden[:, 1:].mean(dim=1)


@torch.inference_mode()
def extract(model, pixels: torch.Tensor, batch_size: int = 32, desc: str | None = None) -> dict[str, torch.Tensor]:
    """{"cls", "patch_mean", "pooler"} features of `model` over `pixels`, in batches (a progress bar with `desc`)."""
    from tqdm.auto import tqdm

    cls, mean, pooler = [], [], []
    for start in tqdm(range(0, len(pixels), batch_size), desc=desc, leave=False, disable=desc is None):
        out = model(pixel_values=pixels[start : start + batch_size])
        c, m = split_features(out)
        cls.append(c.float())
        mean.append(m.float())
        pool = getattr(out, "pooler_output", None)
        pooler.append((pool if pool is not None else c).float())
    return {"cls": torch.cat(cls), "patch_mean": torch.cat(mean), "pooler": torch.cat(pooler)}


def probe_vector(features: dict[str, torch.Tensor]) -> np.ndarray:
    """The probe's input: [CLS] joined with the mean patch token, one row per image."""
    return torch.cat([features["cls"], features["patch_mean"]], dim=1).numpy()


def fit_probe(features: np.ndarray, labels: Sequence[int]):
    """A fitted `StandardScaler` + `LogisticRegression(max_iter=2000)` pipeline (needs two classes or more)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"`labels` must hold at least two classes to fit a probe, got {np.unique(labels).tolist()}.")
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(np.asarray(features), labels)


def stratified_split(labels: Sequence[int], train_size: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of a seeded split keeping class proportions (unstratified when a class
    is too small to stratify)."""
    from sklearn.model_selection import train_test_split

    if not 0 < train_size < 1:
        raise ValueError(f"`train_size` must be a fraction in (0, 1), got {train_size}.")
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    try:
        return train_test_split(index, train_size=train_size, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to stratify
        return train_test_split(index, train_size=train_size, random_state=seed)


class CrossValidatedProbe:
    """One probe per stratified fold, each fitted on the stock features of the other folds, so that every
    image is a test image exactly once.

    Example:

    ```python
    >>> import numpy as np
    >>> from turbo_hf.evaluation.probe import CrossValidatedProbe
    >>> labels = np.array([0, 1] * 10)
    >>> features = np.stack([labels, 1 - labels], axis=1) + 0.01 * np.arange(20)[:, None]
    >>> CrossValidatedProbe(features, labels, folds=5).correct(features).all()
    np.True_
    ```
    """

    def __init__(self, stock_features: np.ndarray, labels: Sequence[int], folds: int = 5, seed: int = 0) -> None:
        from sklearn.model_selection import StratifiedKFold

        self.labels = np.asarray(labels)
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(self.labels)), self.labels)
        self.folds = [(fit_probe(stock_features[train], self.labels[train]), test) for train, test in splits]

    def correct(self, features: np.ndarray) -> np.ndarray:
        """Whether each image is classified right by the probe of the fold it is held out in."""
        hits = np.zeros(len(self.labels), dtype=bool)
        for probe, test in self.folds:
            hits[test] = probe.predict(features[test]) == self.labels[test]
        return hits


__all__ = ["CrossValidatedProbe", "extract", "fit_probe", "probe_vector", "split_features", "stratified_split"]
