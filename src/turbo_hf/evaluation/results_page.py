"""The benchmarks' results page (`benchmarks/README.md`) built from the JSON results in that folder: the DINOv2
speed and quality tables with their plot, a summary of every other benchmark, and a section per evaluation run
(`scripts/make_results_page.py` writes it; nothing is measured here)."""

from __future__ import annotations

import json
from pathlib import Path

from .driver import UsageError, markdown_table

# quality settings shown in the main tables: key in quality_dinov2.json -> (label, mode for the plot style)
MAIN_SETTINGS = {
    "stock": ("stock", "stock"),
    "random": ("random (seed 0)", "random"),
    "random (mean of 3 seeds)": ("random (mean of 3 seeds)", "random"),
    "tome": ("ToMe", "tome"),
    "semantic": ("semantic only", "semantic"),
    "turbo-paper": ("Turbo, paper's raw alpha' = 150", "turbo"),
    "turbo-length-0.02": ("**Turbo, default** (length-normalised alpha = 0.02)", "turbo"),
    "calibrated": ("Turbo, `calibrate()` choice", "turbo"),
}
PLOT_LINES = [  # (quality key, label, colour, marker, linestyle)
    ("random (mean of 3 seeds)", "random (3 seeds)", "tab:gray", "x", "-"),
    ("tome", "ToMe", "tab:blue", "o", "-"),
    ("semantic", "semantic only", "tab:orange", "s", "-"),
    ("turbo-paper", "Turbo, paper's alpha'", "tab:purple", "v", ":"),
    ("turbo-length-0.02", "Turbo (default)", "tab:red", "D", "-"),
]


def _table(headers, rows, align=None) -> str:
    return markdown_table(headers, rows, align)


def _pct(value) -> str:
    return f"{100 * value:.1f}" if value is not None else "–"


def speed_section(speed: dict) -> tuple[str, tuple[float, float]]:
    rows = speed["rows"]
    settings = speed["metadata"]["settings"]
    turbo_alpha = {(row["alpha"], row["alpha_scale"]) for row in rows if row["mode"] == "turbo"}
    body = []
    for row in rows:
        body.append([
            {"tome": "ToMe", "turbo": "Turbo"}.get(row["mode"], row["mode"]), row["r"], row["final_tokens"],
            f"{row['theoretical_speedup']:.2f}x", f"**{row['measured_speedup']:.2f}x**", f"{row['efficiency']:.0%}",
            f"{row['throughput_img_s']:.1f}", f"{row['median_latency_ms']:.0f}",
        ])
    table = _table(["mode", "r", "tokens out", "FLOP limit", "measured speed-up", "efficiency", "images/s", "ms / batch"], body)
    efficiencies = [row["efficiency"] for row in rows if row["mode"] != "stock" and row["r"] >= 8]
    alpha_note = ", ".join(f"alpha={a} ({s})" for a, s in sorted(turbo_alpha, key=str) if a is not None)
    text = "\n\n".join([
        f"## Speed: measured against the stock model ({settings['image_size']} px, {settings['num_tokens']} tokens, "
        f"batch {settings['batch_size']}, {settings['attn'].upper()})",
        f"`python scripts/benchmark_speed.py` ({settings['repeats']} timed round-robin rounds after {settings['warmup']} "
        "warm-up round; in each round the stock model and every setting run once, so drift of the shared machine "
        "hits all alike; medians). FLOP limit = 1 / the FLOP fraction the schedule keeps (attention at N tokens, "
        "MLP at N - r); efficiency = measured speed-up / limit."
        + (f" The Turbo rows of this run used {alpha_note}; the cost of the semantic term does not depend on alpha." if alpha_note else ""),
        table,
        f"From r = 8 on, the measured speed-up is {min(efficiencies):.0%}–{max(efficiencies):.0%} of the FLOP limit "
        "(the matching/merging step and, for Turbo, the [CLS] attention row cost a few percent). At r = 4 the "
        "gain is within the noise of this machine.",
    ])
    return text, (min(efficiencies), max(efficiencies))


def quality_section(quality: dict, efficiency: tuple[float, float]) -> str:
    probe, photos = quality["probe"], quality["photos"]
    r_probe = [str(r) for r in probe["r"]]
    datasets = sorted({key.split(" r=")[0] for cells in probe["rows"].values() for key in cells})
    limits = {r: probe["speed_limit"][r] for r in r_probe}
    headers = ["setting"] + [f"{d} @ {limits[r]:.2f}x (r={r})" for d in datasets for r in r_probe]
    r_photo = [str(r) for r in photos["r"]]
    photo_limits = {r: photos["speed_limit"][r] for r in r_photo}
    headers += [f"photos [CLS] cos @ {photo_limits[r]:.2f}x (r={r})" for r in r_photo]
    headers += [f"photos min cos (r={r})" for r in r_photo]

    def row_for(key, label):
        cells = [label]
        for d in datasets:
            for r in r_probe:
                entry = probe["rows"].get(key, {}).get(f"{d} r={r}")
                text = _pct(entry["accuracy"]) if entry else "–"
                if entry and "accuracy_std" in entry:
                    text += f" ± {100 * entry['accuracy_std']:.1f}"
                cells.append(text)
        for r in r_photo:
            entry = (photos["rows"].get(key) or {}).get(r)
            cells.append(f"{entry['cos_pooler']:.3f}" if entry else "–")
        for r in r_photo:
            entry = (photos["rows"].get(key) or {}).get(r)
            cells.append(f"{entry['min_cos_pooler']:.3f}" if entry and "min_cos_pooler" in entry else "–")
        return cells

    main = _table(headers, [row_for(k, label) for k, (label, _) in MAIN_SETTINGS.items() if k in probe["rows"]])
    others = [k for k in probe["rows"] if k not in MAIN_SETTINGS]
    settings = quality.get("settings", {})
    full = _table(headers, [row_for(k, k + (" (" + ", ".join(f"{a}={v}" for a, v in settings[k].items()) + ")"
                                            if k in settings else "")) for k in others])

    def acc(key, d, r):
        entry = probe["rows"].get(key, {}).get(f"{d} r={r}")
        return 100 * entry["accuracy"] if entry else None

    def cos(key, r):
        entry = (photos["rows"].get(key) or {}).get(r)
        return entry["cos_pooler"] if entry else None

    findings = []
    first = datasets[0]
    for r in r_probe:
        t, m, rnd, st = acc("turbo-length-0.02", first, r), acc("tome", first, r), acc("random (mean of 3 seeds)", first, r), acc("stock", first, r)
        if None not in (t, m, rnd, st):
            findings.append(f"{first} at {limits[r]:.2f}x: Turbo (default) {t:.1f} %, ToMe {m:.1f} % ({t - m:+.1f} points), "
                            f"random (3-seed mean) {rnd:.1f} % (Turbo {t - rnd:+.1f}), stock {st:.1f} %.")
    for r in r_photo:
        t, m, rnd = cos("turbo-length-0.02", r), cos("tome", r), cos("random", r)
        if None not in (t, m, rnd):
            findings.append(f"photos at {photo_limits[r]:.2f}x: mean [CLS] cosine to stock: Turbo (default) {t:.3f}, "
                            f"ToMe {m:.3f}, random (seed 0) {rnd:.3f}.")
    saturated = []  # datasets where random merging is within a point of the stock model at every r
    for d in datasets:
        randoms = [acc("random (mean of 3 seeds)", d, r) for r in r_probe]
        stocks = [acc("stock", d, r) for r in r_probe]
        if None not in randoms + stocks and all(a >= b - 1.0 for a, b in zip(randoms, stocks)):
            saturated.append(f"{d} ({probe['test_size'][d]} test images) is saturated: random merging scores within "
                             "a point of the stock model there, so it cannot separate the methods.")
    meta = quality["metadata"]
    return "\n\n".join([
        "## Quality: Turbo against ToMe, random merging and the stock model",
        f"`python scripts/benchmark_quality.py`. (a) Linear probe at {probe['image_size']} px ({probe['num_tokens']} tokens): "
        "a logistic regression trained once on the STOCK model's features ([CLS] + mean patch token) of a fixed "
        "stratified 70/30 split, applied unchanged to each setting's test features — "
        + ", ".join(f"{d} {probe['train_size'][d]}/{probe['test_size'][d]} train/test images" for d in datasets)
        + f" (digits: sklearn `load_digits`; lfw: scikit-image `lfw_subset`, faces vs non-faces). "
        f"(b) Cosine similarity of the final [CLS] to the stock model on {len(photos['images'])} real photos at "
        f"{photos['image_size']} px ({photos['num_tokens']} tokens). Column headers give the FLOP speed limit of each r "
        f"(the quality runs were not timed; measured speed-ups are {efficiency[0]:.0%}–{efficiency[1]:.0%} of these "
        "limits from r = 8 on, see the speed section). "
        "Accuracies in %; random merging is shown for seed 0 and as mean ± std over seeds 0–2.",
        main,
        "Findings, read off the table:\n\n" + "\n".join(f"- {line}" for line in findings + saturated),
        f"<details><summary>All {len(others)} other settings of the alpha study</summary>\n\n{full}\n\n</details>",
        f"Quality run: {meta['date']}, {meta['runtime_s']:.0f} s, git {meta['git']['commit'][:10]}.",
    ])


def make_plot(quality: dict, speed: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    probe, photos = quality["probe"], quality["photos"]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    r_probe = [str(r) for r in probe["r"]]
    dataset = sorted({key.split(" r=")[0] for cells in probe["rows"].values() for key in cells})[0]
    stock_acc = 100 * probe["rows"]["stock"][f"{dataset} r={r_probe[0]}"]["accuracy"]
    r_photo = [str(r) for r in photos["r"]]
    for key, label, colour, marker, style in PLOT_LINES:
        if key not in probe["rows"]:
            continue
        xs = [1.0] + [probe["speed_limit"][r] for r in r_probe]
        ys = [stock_acc] + [100 * probe["rows"][key][f"{dataset} r={r}"]["accuracy"] for r in r_probe]
        axes[0].plot(xs, ys, color=colour, marker=marker, linestyle=style, label=label)
        if key in photos["rows"]:
            xs = [1.0] + [photos["speed_limit"][r] for r in r_photo]
            ys = [1.0] + [photos["rows"][key][r]["cos_pooler"] for r in r_photo]
            axes[1].plot(xs, ys, color=colour, marker=marker, linestyle=style, label=label)
    axes[0].scatter([1.0], [stock_acc], marker="*", s=160, color="black", zorder=5, label="stock")
    axes[1].scatter([1.0], [1.0], marker="*", s=160, color="black", zorder=5, label="stock")
    axes[0].set(title=f"(a) {dataset} linear probe, {probe['image_size']} px", xlabel="FLOP speed limit (x)",
                ylabel="test accuracy (%)")
    axes[1].set(title=f"(b) [CLS] fidelity on photos, {photos['image_size']} px", xlabel="FLOP speed limit (x)",
                ylabel="mean cosine to the stock [CLS]")
    rows = speed["rows"]
    for mode, label, colour, marker in (("tome", "ToMe", "tab:blue", "o"), ("turbo", "Turbo", "tab:red", "D")):
        points = sorted((row for row in rows if row["mode"] == mode), key=lambda row: row["r"])
        axes[2].plot([1.0] + [p["theoretical_speedup"] for p in points], [1.0] + [p["measured_speedup"] for p in points],
                     color=colour, marker=marker, label=f"{label}, measured")
    top = max(row["theoretical_speedup"] for row in rows) * 1.05
    axes[2].plot([1, top], [1, top], color="black", linestyle="--", label="= FLOP limit")
    settings = speed["metadata"]["settings"]
    axes[2].set(title=f"(c) measured speed-up, {settings['image_size']} px, batch {settings['batch_size']}",
                xlabel="FLOP speed limit (x)", ylabel="measured speed-up over stock (x)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Turbo on the real DINOv2-S/14 (CPU)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# measured tables quoted from their own .md (stem, heading, the command that measured them)
SUMMARIES = [
    ("peers_vit_b16", "Against the peers: pruna `token_merging` and ToMe on identical ViT-B/16 weights",
     "PYTHONPATH=src python scripts/benchmark_peers.py --r 8,13,16 --batch-size 8 --rounds 5 --rounds-single 7 "
     "--threads 1"),
    ("compile_vit", "Compiled: `torch.compile` stock against compiled Turbo (ViT-B/16)",
     "PYTHONPATH=src python scripts/benchmark_compile.py --rounds 3 --warmup 0"),
    ("compile_vit_b1", "Compiled at batch 1 (ViT-B/16, r=16)",
     "PYTHONPATH=src python scripts/benchmark_compile.py --batch-size 1 --r 16 --rounds 7 --threads 1 "
     "--name compile_vit_b1"),
    ("merge_overhead_vit_b16", "Merge overhead per component (ViT-B/16, eager)",
     "PYTHONPATH=src python scripts/benchmark_merge_overhead.py --batch-sizes 1,16 --r 16 --rounds 5 --threads 1"),
]


def summary_sections(bench_dir: Path) -> list[str]:
    """The first table of each `SUMMARIES` result's .md, with its command and a link to the notes."""
    sections = []
    for stem, heading, command in SUMMARIES:
        path = bench_dir / f"{stem}.md"
        if not path.is_file():
            continue
        lines, table = path.read_text().splitlines(), []
        for line in lines[lines.index(next(line for line in lines if line.startswith("|"))):]:
            if not line.startswith("|"):
                break
            table.append(line)
        sections.append("\n\n".join([f"## {heading}", f"`{command}`; settings, machine load and caveats: "
                                      f"[{path.name}]({path.name}).", "\n".join(table)]))
    return sections


def eval_sections(bench_dir: Path, skip: set[str]) -> list[str]:
    """Sections for results written by scripts/eval_*.py (JSON with "task" and "rows")."""
    from .driver import results_table

    sections = []
    for path in sorted(bench_dir.glob("*.json")):
        if path.name in skip:
            continue
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(payload, dict) or "task" not in payload or "rows" not in payload:
            continue
        keys = [k for k, v in (payload["rows"][0].get("metrics") or {}).items() if isinstance(v, (int, float))]
        metrics = [(k, k) for k in keys if k != "num_samples"][:8]
        meta = payload.get("metadata", {})
        part = [f"## {payload['task']}: `{path.name}`", f"{meta.get('date', '')}, command: `{meta.get('command', '')}`",
                results_table(payload["rows"], metrics)]
        plot = path.with_suffix(".png")
        if plot.exists():
            part.append(f"![{payload['task']}]({plot.name})")
        sections.append("\n\n".join(part))
    return sections


def build_page(bench_dir: Path, speed_file: str = "speed_dinov2.json", quality_file: str = "quality_dinov2.json",
               plot_file: str = "dinov2_results.png") -> tuple[str, Path | None]:
    """The results page (markdown) from the JSON results in `bench_dir`, and the plot it wrote (None without
    matplotlib). Raises `UsageError` naming the benchmark script to run when an input is missing."""
    paths = {"speed": bench_dir / speed_file, "quality": bench_dir / quality_file}
    for name, path in paths.items():
        if not path.is_file():
            raise UsageError(f"{path} not found: run scripts/benchmark_{name}.py first (or pass --{name}).")
    speed = json.loads(paths["speed"].read_text())
    quality = json.loads(paths["quality"].read_text())
    plot = make_plot(quality, speed, bench_dir / plot_file)
    speed_text, efficiency = speed_section(speed)
    meta = speed["metadata"]
    machine, versions = meta["machine"], meta["versions"]
    model = meta["model"]["real_weights"] or {}
    sections = [
        "# Benchmarks",
        "<!-- generated by scripts/make_results_page.py from the JSON files in this folder; do not edit by hand -->",
        "Regenerate this page with `python scripts/make_results_page.py` (it reads the JSON results here; it measures "
        "nothing). All numbers: the real DINOv2-S/14 "
        + (f"(`{model.get('name')}`, converted from `{model.get('source')}`, verified against onnxruntime to "
           f"{model.get('max_abs_diff', 0):.1e}) " if model else "")
        + f"on {machine['cpu_model']} with {machine['cpu_count']} CPUs shared with other jobs; torch {versions['torch']}, "
        f"transformers {versions['transformers']}, turbo_hf {versions['turbo_hf']}.",
    ]
    if plot is not None:
        sections.append(f"![Turbo on DINOv2: quality and measured speed]({plot.name})")
    sections += [speed_text, quality_section(quality, efficiency)]
    sections += summary_sections(bench_dir)
    extra = eval_sections(bench_dir, {speed_file, quality_file})
    if extra:
        sections += ["# Other evaluations"] + extra
    sections.append(
        "## Reproduce\n\n```bash\nturbo-hf fetch                                   # the real DINOv2-S/14\n"
        "python scripts/benchmark_speed.py --repeats 3   # -> benchmarks/speed_dinov2.{json,md}\n"
        "python scripts/benchmark_quality.py             # -> benchmarks/quality_dinov2.{json,md}\n"
        "python scripts/make_results_page.py             # -> benchmarks/README.md and the plot\n```"
    )
    return "\n\n".join(sections).rstrip() + "\n", plot


__all__ = ["build_page"]
