"""Evaluation output: features, run metadata, markdown tables, the quality-vs-speed plot, JSON files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..modeling.merging import unmerged_hidden_states
from .runner import Runner
from .tables import markdown_table
from .settings import MODE_LABELS, MODE_ORDER, MODE_STYLES


def as_tensor(output) -> torch.Tensor:
    """Embeddings from `get_image_features` / `get_text_features`, whether a tensor or an output object."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output[0]


def token_features(output, has_cls: bool = True) -> torch.Tensor:
    """Features of a vision encoder output over all tokens: [CLS] (or the pooled output when there is no
    [CLS]) joined with the mean of the unmerged tokens (patches only when there is a [CLS])."""
    hidden = output.last_hidden_state
    if hidden.ndim != 3:  # a convolutional feature map: use the pooled output
        pooled = getattr(output, "pooler_output", None)
        return (pooled if pooled is not None else hidden.flatten(2).mean(dim=-1)).flatten(1)
    hidden = unmerged_hidden_states(output)
    if has_cls:
        return torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=-1)
    pooled = getattr(output, "pooler_output", None)
    pooled = pooled if pooled is not None else hidden.mean(dim=1)
    return torch.cat([pooled, hidden.mean(dim=1)], dim=-1)


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def run_metadata(runner: Runner | None = None, **settings) -> dict:
    """Machine, library versions, git state, process count and the given settings, for the JSON results.

    Shared by the evaluation scripts, `turbo-hf bench` and the benchmark scripts.
    """
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    status = _git("status", "--porcelain", "--", "src")
    versions = {"python": platform.python_version()}
    for name in ("transformers", "accelerate", "datasets", "evaluate", "numpy", "scikit-learn"):
        versions[name] = package_version(name)
    versions["torch"] = torch.__version__
    versions["turbo_hf"] = getattr(sys.modules.get("turbo_hf"), "__version__", None) or package_version("turbo-hf")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpus": gpus,
            "cuda": torch.version.cuda,
        },
        "torch_num_threads": torch.get_num_threads(),
        "versions": versions,
        "git": {"commit": _git("rev-parse", "HEAD"), "src_dirty": bool(status) if status is not None else None},
        "processes": runner.num_processes if runner is not None else 1,
        "device": str(runner.device) if runner is not None else None,
        "command": " ".join(sys.argv),
        "settings": settings,
    }


def format_metric(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def results_table(rows: Sequence[dict], metrics: Sequence[tuple[str, str]]) -> str:
    """The markdown table of a results list: setting, tokens, FLOP limit, measured speed, then metrics."""
    headers = ["setting", "final tokens", "FLOP limit", "measured speed-up", "ms / batch", "samples/s",
               "GFLOPs / sample", "peak MB"]
    headers += [label for _, label in metrics]
    body = []
    for row in rows:
        speed = row.get("speed") or {}
        memory = speed.get("memory") or {}
        plan = row.get("plan") or {}
        body.append(
            [row["name"], plan.get("final_tokens") or "all", f"{plan.get('flops_speed_limit', 1.0):.2f}x",
             f"{speed['speedup']:.2f}x" if "speedup" in speed else "n/a",
             format_metric(speed.get("median_ms"), 1), format_metric(speed.get("throughput"), 1),
             f"{speed['gflops_per_sample']:.3g}" if speed.get("gflops_per_sample") is not None else "n/a",
             format_metric(memory.get("peak_mb"), 0)]
            + [format_metric((row.get("metrics") or {}).get(key)) for key, _ in metrics]
        )
    return markdown_table(headers, body)


def plot_quality_vs_speed(
    rows: Sequence[dict], metrics: Sequence[tuple[str, str]], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Quality against measured speed-up, one panel per metric, one line per mode (each line starts at the
    stock model, its r = 0 point). Returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = [(k, l) for k, l in metrics if any(isinstance((r.get("metrics") or {}).get(k), (int, float)) for r in rows)]
    if not metrics:
        return None
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    stock = next((row for row in rows if row["mode"] == "stock"), None)
    for axis, (key, label) in zip(axes[0], metrics):
        for mode in MODE_ORDER:
            points = [row for row in rows if row["mode"] == mode]
            if mode != "stock" and stock is not None and points:
                points = [stock] + sorted(points, key=lambda row: _r_key(row["r"]))
            xs, ys = [], []
            for row in points:
                value = (row.get("metrics") or {}).get(key)
                speed = (row.get("speed") or {}).get("speedup")
                if isinstance(value, (int, float)) and speed is not None:
                    xs.append(speed)
                    ys.append(value)
            if not xs:
                continue
            colour, marker = MODE_STYLES[mode]
            if mode == "stock":
                axis.scatter(xs, ys, color=colour, marker=marker, s=120, zorder=5, label=MODE_LABELS[mode])
            else:
                axis.plot(xs, ys, color=colour, marker=marker, label=MODE_LABELS[mode])
                for x, y, row in zip(xs[1:], ys[1:], points[1:]):
                    axis.annotate(f"r={row['r']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.set_xlabel("measured speed-up over the stock model (x)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _r_key(r) -> float:
    return float(r) if isinstance(r, (int, float)) else float(sum(r))


def save_results(
    out_dir: str | os.PathLike, stem: str, payload: dict, markdown: str, plot_metrics: Sequence[tuple[str, str]],
    title: str = "",
) -> dict[str, str]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` (quality vs speed) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    plot = plot_quality_vs_speed(payload["rows"], plot_metrics, paths["plot"], title)
    if plot is None:
        paths.pop("plot")
    else:
        markdown = markdown.rstrip() + f"\n\n![quality against measured speed-up]({paths['plot'].name})\n"
    payload["files"] = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown.rstrip() + "\n")
    return {k: str(v) for k, v in paths.items()}


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
