"""Evaluation data through `datasets`: a Hub dataset name, an `imagefolder`, or a JSON-lines file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from .arguments import comma_list
from .settings import UsageError
from .local_paths import missing_local_path


def load_data(
    dataset: str,
    split: str | None = None,
    config: str | None = None,
    where: Sequence[str] = (),
    max_samples: int | None = None,
    image_column: str = "image",
    label_column: str | None = None,
    seed: int = 0,
):
    """A `datasets.Dataset` from a Hub name, a local folder or a JSON-lines file.

    - A directory: loaded with `imagefolder` (class sub-folders give a `label` column; a `metadata.jsonl`
      or `metadata.csv` with `file_name` adds captions, questions, ... as columns).
    - A `.jsonl` / `.json` file: one record per line; `image_column` holds image paths, relative to the
      file's folder or absolute, and becomes an `Image` column.
    - Anything else: a dataset name on the Hugging Face Hub (`config` selects its configuration). A value
      that looks like a local path (`turbo_hf.evaluation.local_paths.looks_local`: `./x`, `/x`, `~/x`, `runs/2024/x`,
      `dir/x` next to a `dir/` folder) but does not exist fails at once instead of trying the Hub.

    `split` defaults to the first of test / validation / val / train present. `where` keeps rows whose
    column equals a value (`"split=test"`). `max_samples` keeps that many rows: spread over the classes when the
    data has classes (`label_column`, or else a `ClassLabel` column such as an imagefolder's `label`; see
    `stratified_indices`, seeded by `seed`), else the first rows; in dataset order either way.
    """
    path = Path(dataset).expanduser()
    if (path.suffix in (".jsonl", ".json") and not path.is_file()) or missing_local_path(dataset):
        raise UsageError(f"--dataset: the local file or folder {dataset!r} does not exist.")
    import datasets

    try:
        if path.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        elif path.is_file() and path.suffix in (".jsonl", ".json"):
            loaded = datasets.load_dataset("json", data_files=str(path))
            loaded = _resolve_image_paths(loaded, path.parent, image_column)
        elif path.is_file():
            raise UsageError(f"--dataset {dataset!r} is a file but not a .jsonl / .json file.")
        else:  # the Hub: download only the split evaluated
            names = datasets.get_dataset_split_names(dataset, config)
            split = _pick_split(dataset, split, names)
            loaded = {split: datasets.load_dataset(dataset, config, split=split)}
    except UsageError:
        raise
    except Exception as error:  # network, missing dataset, bad files: all end as a usage error
        raise UsageError(f"Could not load dataset {dataset!r}: {type(error).__name__}: {error}") from error
    data = loaded[_pick_split(dataset, split, list(loaded))]
    for condition in where:
        if "=" not in condition:
            raise UsageError(f"--where takes COLUMN=VALUE, got {condition!r}.")
        column, value = condition.split("=", 1)
        require_columns(data, where=column)
        data = data.filter(lambda v: str(v) == value, input_columns=[column])
    if max_samples is not None and max_samples < len(data):
        column = label_column if label_column in data.column_names else _class_column(data)
        rows = stratified_indices(data[column], max_samples, seed) if column else range(max_samples)
        data = data.select(rows)
    if len(data) == 0:
        raise UsageError(f"Dataset {dataset!r} (split {split!r}) has no rows to evaluate.")
    return data


def _class_column(data) -> str | None:
    import datasets

    return next((name for name, feature in data.features.items() if isinstance(feature, datasets.ClassLabel)), None)


def stratified_indices(labels: Sequence, count: int, seed: int = 0) -> list[int]:
    """`count` row indices spread over the classes of `labels`: classes take turns (in a seeded order) giving a
    seeded-random row until `count` are taken, so each class gets `count // classes` rows or one more (all of
    its rows when it has fewer). Sorted (dataset order).

    Example:

    ```python
    >>> from turbo_hf.evaluation.data import stratified_indices
    >>> labels = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    >>> sorted({labels[i] for i in stratified_indices(labels, 3)})
    [0, 1, 2]
    ```
    """
    import numpy as np

    if count < 1:
        raise UsageError(f"--max-samples must be >= 1, got {count}.")
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for index, label in enumerate(labels):
        groups.setdefault(str(label), []).append(index)
    queues = [list(rng.permutation(groups[key])) for key in sorted(groups)]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    chosen: list[int] = []
    while len(chosen) < min(count, len(labels)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop()))
    return sorted(chosen)


def _pick_split(dataset: str, split: str | None, names: Sequence[str]) -> str:
    if split is None:
        return next((name for name in ("test", "validation", "val", "train") if name in names), names[0])
    if split not in names:
        raise UsageError(f"Dataset {dataset!r} has no split {split!r}; it has: {', '.join(names)}.")
    return split


def _resolve_image_paths(loaded, folder: Path, column: str):
    import datasets

    first = next(iter(loaded.values()))
    if column not in first.column_names:
        return loaded

    def absolute(value):
        return value if value is None or os.path.isabs(value) else str(folder / value)

    loaded = loaded.map(lambda v: {column: absolute(v)}, input_columns=[column])
    return loaded.cast_column(column, datasets.Image())


def require_columns(data, **columns: str | Sequence[str] | None) -> None:
    """Raise a `UsageError` naming the option when a column the script needs is missing."""
    names = data.column_names
    for option, wanted in columns.items():
        if wanted is None:
            continue
        for column in [wanted] if isinstance(wanted, str) else wanted:
            if column not in names:
                flag = "--" + option.replace("_", "-")
                raise UsageError(
                    f"The dataset has no column {column!r} (its columns: {', '.join(names)}); "
                    f"name the right one with {flag}."
                )


def split_columns(text: str | None) -> list[str] | None:
    """`"caption_0,caption_1"` -> a list of column names (None stays None)."""
    if text is None:
        return None
    return comma_list(text, str, "the column list")


def to_rgb(image):
    """A PIL RGB image from a `datasets` image value (PIL image, path, or {"path", "bytes"})."""
    from PIL import Image

    if isinstance(image, dict):
        if image.get("bytes"):
            import io

            image = Image.open(io.BytesIO(image["bytes"]))
        else:
            image = Image.open(image["path"])
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    return image.convert("RGB")


def text_values(value, keys: Sequence[str] = ("caption", "raw", "text", "answer", "sentence")) -> list[str]:
    """A list of strings from a column value: a string, a list of strings, or a list of dicts."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return text_values(value[key], keys)
        raise UsageError(f"Cannot read text from {value!r}: expected one of the keys {list(keys)}.")
    texts = []
    for item in value:
        texts.extend(text_values(item, keys))
    return texts


def row_texts(row: dict, columns: Sequence[str]) -> list[str]:
    """The texts of one row over one or more columns (e.g. `caption_0` ... `caption_4`)."""
    texts = []
    for column in columns:
        texts.extend(t for t in text_values(row[column]) if t.strip())
    return texts
