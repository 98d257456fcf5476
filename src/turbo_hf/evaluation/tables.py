"""Benchmark output: the markdown table writer, run metadata as markdown, and `<stem>.json` + `<stem>.md` files."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column, "l" or "r" (default: first left, the rest right).

    Example:

    ```python
    >>> from turbo_hf.evaluation.tables import markdown_table
    >>> print(markdown_table(["setting", "ms"], [["stock", 12.5], ["turbo r=8", 9.1]]))
    | setting | ms |
    | :--- | ---: |
    | stock | 12.5 |
    | turbo r=8 | 9.1 |
    ```
    """
    align = list(align or ["l"] + ["r"] * (len(headers) - 1))
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"`align` must give 'l' or 'r' for each of the {len(headers)} columns, got {align!r}.")
    marks = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def metadata_markdown(meta: dict) -> str:
    """A short human-readable block of a benchmark's metadata (`backbone.benchmark_metadata`) for the .md files."""
    m, v = meta["machine"], meta["versions"]
    git = meta["git"]
    return "\n".join(
        [
            f"- date: {meta['date']}",
            f"- machine: {m['platform']}, {m['cpu_model']}, {m['cpu_count']} CPUs "
            f"(affinity {m['cpu_affinity']}), load average at start {m['load_average_at_start']}",
            f"- torch {v['torch']} ({meta['torch_num_threads']} threads), transformers {v['transformers']}, "
            f"turbo_hf {v['turbo_hf']}, scikit-learn {v['scikit-learn']}, python {v['python']}",
            f"- git commit {git['commit']}" + (" (src/ has uncommitted changes)" if git["src_dirty"] else ""),
            f"- model: {meta['model']['folder']}",
        ]
    )


def save(out_dir: str | Path, stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `out_dir` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def publish(out_dir: str | Path, stem: str, title: str, notes: str, table: str, meta: dict, rows: list) -> dict:
    """Print a benchmark's table and save it (`<stem>.json` and `<stem>.md` with notes and run metadata)."""
    runtime = meta["runtime_s"]
    markdown = "\n\n".join([title, notes, table, "## Run", metadata_markdown(meta) + f"\n- total runtime: {runtime:.0f} s"])
    print()
    print(table)
    json_path, md_path = save(out_dir, stem, {"metadata": meta, "rows": rows}, markdown)
    print(f"\nsaved {json_path} and {md_path}  (total {runtime:.0f} s)")
    return {"metadata": meta, "rows": rows}


class Stopwatch:
    """Wall time of named phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str, since: float) -> float:
        """Record the seconds since `since` as phase `name`."""
        self.phases[name] = round(time.perf_counter() - since, 2)
        return self.phases[name]

    def total(self) -> float:
        """Seconds since the stopwatch was made."""
        return round(time.perf_counter() - self.start, 2)


__all__ = ["Stopwatch", "markdown_table", "metadata_markdown", "publish", "save"]
