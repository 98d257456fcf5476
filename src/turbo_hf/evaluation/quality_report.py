"""The markdown of the quality benchmark (`scripts/benchmark_quality.py`): the probe table, the calibration
section, the photo-fidelity table and the best Turbo variant against ToMe."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .tables import markdown_table


def _accuracy_cell(row: dict | None) -> str:
    """Accuracy in percent, ± the spread over seeds, (+gains/-losses) against ToMe."""
    if row is None:
        return "-"
    text = f"{100 * row['accuracy']:.2f}"
    if "accuracy_std" in row:
        text += f" ± {100 * row['accuracy_std']:.2f}"
    if "vs_tome" in row:
        text += f" (+{row['vs_tome']['gains']}/-{row['vs_tome']['losses']})"
    return text


def probe_table(probe_rows: dict, datasets: Sequence[str], r_values: Sequence[int]) -> str:
    """One row per setting: accuracy per dataset and r, and the mean [CLS] cosine per r."""
    headers = ["setting"]
    for name in datasets:
        for r in r_values:
            headers.append(f"{name} r={r} acc %")
    for r in r_values:
        headers.append(f"[CLS] cos r={r}")
    table_rows = []
    for setting, cells in probe_rows.items():
        row = [setting]
        for name in datasets:
            for r in r_values:
                row.append(_accuracy_cell(cells.get((name, r))))
        for r in r_values:
            values = [cells[(name, r)]["fidelity_cls"] for name in datasets if (name, r) in cells]
            row.append(f"{statistics.mean(values):.4f}" if values else "-")
        table_rows.append(row)
    return markdown_table(headers, table_rows)


def calibration_section(calibration_tables: dict, calibration_names: Sequence[str]) -> list[str]:
    """The calibration choices (top 4 candidates, ToMe's fidelity) and the calibration images, as sections."""
    calib_names = calibration_names
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
    sources = sorted({n.split(":")[0] + (":" + n.split(":")[1] if n.startswith("crop") else "") for n in calib_names})
    return ["Calibration images (unlabeled, in no evaluation set): " + ", ".join(sources)
            + f" ({len(calib_names)} images).", "\n".join(lines), "; ".join(tome_note)]


def photo_table(photo_result: dict) -> str:
    """One row per setting: mean and minimum [CLS] cosine on the photos per r."""
    r_photo = photo_result["r"]
    headers = ["setting"] + [f"mean cos r={r}" for r in r_photo] + [f"min cos r={r}" for r in r_photo]
    rows = []
    for setting, cells in photo_result["rows"].items():
        rows.append([setting] + [f"{cells[r]['cos_pooler']:.4f}" if r in cells else "-" for r in r_photo]
                    + [f"{cells[r]['min_cos_pooler']:.4f}" if r in cells and "min_cos_pooler" in cells[r]
                       else "-" for r in r_photo])
    return markdown_table(headers, rows)


def best_against_tome(probe_rows: dict, datasets: Sequence[str], r_values: Sequence[int], test_sizes: dict,
                      photo_result: dict | None) -> list[str]:
    """One line per probe column (and photo r): the best `turbo-*` setting against ToMe."""
    n_test = test_sizes
    summary = []
    turbo_names = [s for s in probe_rows if s.startswith("turbo-")]
    if "tome" in probe_rows and turbo_names:
        for name in datasets:
            for r in r_values:
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
    return summary
