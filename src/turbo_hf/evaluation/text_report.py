"""The markdown report of a text benchmark (`text_benchmark.run_text_benchmark`): one table per length with every
setting, and the modes side by side at each `r` with the paired turbo - tome cosine difference."""

from __future__ import annotations

import statistics

from ..modeling.configuration_turbo import TurboConfig
from .tables import markdown_table
from .text_benchmark import MODES
from .timing import timing_summary

_EXPLANATION = (
    "Sentence embedding as sentence-transformers computes it: mean pooling of the (unmerged) last hidden state "
    "with the input attention mask, L2-normalised; compared with the stock model's embedding of the same passage. "
    "*NN agree*: share of passages whose nearest neighbour among the other passages (all embedded with the "
    "setting) is the stock nearest neighbour; *NN agree (x)*: the same with the setting's embeddings as queries "
    "against the stock embeddings as the index. *limit*: FLOP speed limit "
    "`1 / turbo_plan(model, length)['flops_fraction']`. *speed-up (wall)*: median of interleaved timed runs of "
    "one batch of {batch_size} passages padded to the full length ({repeats} rotating round-robin rounds, Turbo "
    "applied before the clock starts; every setting already ran on that batch in the quality pass), stock time / "
    "setting time; *speed-up (CPU time)*: the same with the median CPU time of the process (with one torch thread "
    "this is the compute itself, not the time spent waiting for a core on a shared machine; the JSON keeps every "
    "wall-clock sample). Turbo uses the default alpha ({alpha}, `alpha_scale='{alpha_scale}'`); random uses seed 0."
)

_CORPUS = (
    "Text: prose paragraphs of the package descriptions (`METADATA`) of installed packages, cleaned (code, "
    "tables, directives, URLs and release-note entries dropped) and packed by sentence into passages of at most "
    "`length - 2` word pieces; taken round-robin over the packages. Packages (version): {packages}."
)


def _paired_difference(turbo: dict | None, tome: dict | None) -> list[str]:
    """Mean turbo - tome per-passage cosine with its standard error, and the share where turbo is closer."""
    if not turbo or not tome:
        return ["-", "-"]
    diff = [a - b for a, b in zip(turbo["cos_per_passage"], tome["cos_per_passage"])]
    error = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
    closer = sum(d > 0 for d in diff) / len(diff)
    return [f"{statistics.fmean(diff):+.4f} ± {error:.4f}", f"{100 * closer:.0f}%"]


def mode_summary(block: dict) -> str:
    """The modes side by side at each `r` of one length: cos mean / min, NN agreement, turbo - tome."""
    by = {(row["mode"], row["r"]): row for row in block["rows"]}
    headers = ["r", "limit", *(f"{mode} cos" for mode in MODES), *(f"{mode} NN" for mode in MODES),
               "turbo - tome cos", "turbo closer"]
    body = []
    for r in sorted({row["r"] for row in block["rows"]}):
        rows = [by.get((mode, r)) for mode in MODES]
        limit = next(row["speed_limit"] for row in rows if row)
        body.append(
            [r, f"{limit:.2f}x"]
            + [f"{row['cos_mean']:.4f} / {row['cos_min']:.3f}" if row else "-" for row in rows]
            + [f"{100 * row['nn_agreement']:.1f}%" if row else "-" for row in rows]
            + _paired_difference(by.get(("turbo", r)), by.get(("tome", r)))
        )
    intro = (
        f"Side by side at {block['length']} tokens (cos mean / cos min; NN agree; turbo - tome: the mean paired "
        "difference of the per-passage cosine with its standard error, and the share of passages where turbo's "
        "embedding is closer to the stock one):"
    )
    return intro + "\n\n" + markdown_table(headers, body, ["r"] * len(headers))


def length_section(block: dict) -> str:
    """The section of one length: the passages, the stock timing and margin, the table of every setting."""
    length = block["length"]
    stock = timing_summary(block["stock_seconds_samples"])
    sources = ", ".join(f"{name} ({count})" for name, count in block["passages_per_package"].items())
    intro = (
        f"{block['passages']} passages (real tokens per passage: mean {block['real_tokens_mean']:.1f}, min "
        f"{block['real_tokens_min']}; {block['full_rows']} fill all {length}), from {sources}. Stock time for the "
        f"batch: {block['stock_seconds']:.3f} s wall (median; min {block['stock_seconds_min']:.3f} s, spread "
        f"(max - min) / median {100 * stock['spread']:.0f}%), {block['stock_cpu_seconds']:.3f} s CPU. Stock "
        f"nearest-neighbour margin (best minus second-best cosine): median {block['stock_nn_margin_median']:.4f}, "
        f"below 0.01 for {100 * block['stock_nn_margin_below_0.01']:.1f}% of the passages."
    )
    headers = ["setting", "tokens out", "limit", "speed-up (wall)", "speed-up (CPU time)", "cos mean", "cos min",
               "cos 5th pct", "NN agree", "NN agree (x)"]
    body = [
        [row["setting"], row["output_tokens"], f"{row['speed_limit']:.2f}x", f"{row['speedup']:.2f}x",
         f"{row['speedup_cpu']:.2f}x", f"{row['cos_mean']:.4f}", f"{row['cos_min']:.4f}", f"{row['cos_p05']:.4f}",
         f"{100 * row['nn_agreement']:.1f}%", f"{100 * row['nn_agreement_query_vs_stock_index']:.1f}%"]
        for row in block["rows"]
    ]
    return "\n\n".join([f"## {length} tokens", intro, markdown_table(headers, body), mode_summary(block)])


def text_benchmark_markdown(result: dict, title: str, script: str = "scripts/benchmark_text.py") -> str:
    """The whole report: how it ran (machine, versions, threads, load), how to read it, one section per length."""
    meta, settings = result["metadata"], result["settings"]
    load = ", ".join(f"{x:.2f}" for x in meta["machine"]["load_average_at_start"] or [])
    ran = (
        f"Generated by `{script}` on {meta['date']} ({meta['machine']['cpu_model']}, "
        f"{meta['machine']['cpu_affinity']} usable cores, torch {meta['versions']['torch']} with "
        f"{meta['torch_num_threads']} threads, transformers {meta['versions']['transformers']}, turbo_hf "
        f"{meta['versions']['turbo_hf']}; load average at start {load})."
    )
    defaults = TurboConfig()
    explanation = _EXPLANATION.format(batch_size=settings["batch_size"], repeats=settings["repeats"],
                                      alpha=defaults.alpha, alpha_scale=defaults.alpha_scale)
    packages = ", ".join(f"{name} {version}" for name, version in result["text_sources"].items())
    sections = [length_section(block) for block in result["lengths"]]
    footer = f"Total run time: {result['runtime_seconds']:.0f} s."
    return "\n\n".join([f"# {title}", ran, explanation, _CORPUS.format(packages=packages), *sections, footer]) + "\n"


__all__ = ["length_section", "mode_summary", "text_benchmark_markdown"]
