"""A text corpus that every Python environment has: the package descriptions of installed distributions.

The long description of a distribution (the body of its `*.dist-info/METADATA`, usually its README) is cleaned
to prose paragraphs (code blocks, tables, directives, URLs, headings and release-note entries dropped), split
into sentences and packed into passages of at most `length - 2` word pieces, so that with [CLS] and [SEP] most
rows of a batch padded to `length` are nearly full. The selection is deterministic: packages in a fixed order,
passages taken round-robin over them.

Example:

```python
>>> from turbo_hf.evaluation.text_corpus import clean_paragraphs, split_sentences
>>> readme = '''Title
... =====
...
... Install it with ``pip``. It packs the words of a sentence into passages and keeps only prose, as you see here.
...
... .. code-block:: python
...
...     import this
... '''
>>> paragraphs = clean_paragraphs(readme)
>>> paragraphs
['Install it with pip. It packs the words of a sentence into passages and keeps only prose, as you see here.']
>>> split_sentences(paragraphs[0])[1]
'It packs the words of a sentence into passages and keeps only prose, as you see here.'
```
"""

from __future__ import annotations

import email
import importlib.metadata
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Packages whose description gives the text, in the order passages are taken (round-robin). Missing ones are
# skipped; the ones used are reported with their versions.
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

_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"[=\-~^*#`'\"+.:_ ]{3,}")
_SKIP_PREFIXES = ("|", "+-", "+=", "<", ">>>", "$ ", "#", "!", "[")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
_INLINE = (  # (pattern, replacement), applied in order to a paragraph joined to one line
    (r"!\[[^\]]*\]\([^)]*\)", ""),  # images
    (r"\[([^\]]+)\]\([^)]*\)", r"\1"),  # markdown links -> their text
    (r"`([^`<]+?)\s*<[^>]+>`_+", r"\1"),  # rst links -> their text
    (r"<[^>]+>", ""),  # html tags
    (r"https?://\S+", ""),  # bare URLs
    (r":[a-z:]+:`([^`]+)`", r"\1"),  # rst roles
)


class Passage(NamedTuple):
    """One passage of the corpus: the package it comes from, its text and its word pieces (at most the budget)."""

    package: str
    text: str
    tokens: int


def package_description(package: str) -> tuple[str, str] | None:
    """(long description, version) of an installed distribution, from its `METADATA`; None when it has none."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    text = distribution.read_text("METADATA")
    if text is None:
        return None
    message = email.message_from_string(text)
    body = message.get_payload()
    if not isinstance(body, str):
        return None
    return body, str(message.get("Version", "?"))


def _prose_lines(text: str) -> list[str]:
    """The lines of a README with code, directives, tables, html, prompts and headings blanked out."""
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
    return out


def _is_prose(paragraph: str) -> bool:
    """Long enough, mostly letters, a sentence (not a list of names), not a release-note entry."""
    words = paragraph.split()
    if len(words) < 12 or sum(c.isalpha() for c in paragraph) < 0.6 * len(paragraph):
        return False
    if not re.search(r"[.!?:]$", paragraph) and len(words) < 25:  # lists of names, headings run together
        return False
    return not (" by @" in paragraph or len(re.findall(r"#\d{3,}", paragraph)) >= 2)


def clean_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a README (markdown or reStructuredText), each on one line: no code, tables,
    directives or URLs; links keep their text, markup is removed."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", "\n".join(_prose_lines(text))):
        paragraph = " ".join(block.split())
        for pattern, replacement in _INLINE:
            paragraph = re.sub(pattern, replacement, paragraph)
        paragraph = paragraph.replace("**", "").replace("``", "").replace("`", "")
        paragraph = re.sub(r"\s+", " ", paragraph).strip(" -*")
        if _is_prose(paragraph):
            paragraphs.append(paragraph)
    return paragraphs


def split_sentences(paragraph: str) -> list[str]:
    """The sentences of a paragraph: split after `.`, `!` or `?` before a capital, a digit, a quote or `(`."""
    return _SENTENCE.split(paragraph)


def gather_texts(packages: Sequence[str] = TEXT_PACKAGES) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({package: prose paragraphs}, {package: version}) of the installed `packages` that have prose."""
    texts, versions = {}, {}
    for package in packages:
        found = package_description(package)
        if found is None:
            continue
        paragraphs = clean_paragraphs(found[0])
        if paragraphs:
            texts[package], versions[package] = paragraphs, found[1]
    return texts, versions


def pack_passages(tokenizer, paragraphs: Sequence[str], length: int) -> list[tuple[str, int]]:
    """Sentences packed in order into passages of at most `length - 2` word pieces: (text, word pieces).

    A sentence that alone is longer makes a passage of its own (truncated when tokenised; its count is capped at
    the budget); passages shorter than half the budget are dropped.
    """
    budget = length - 2
    passages, current, count = [], [], 0
    for paragraph in paragraphs:
        for sentence in split_sentences(paragraph):
            n = len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
            if current and count + n > budget:
                passages.append((" ".join(current), count))
                current, count = [], 0
            current.append(sentence)
            count += n
    if current:
        passages.append((" ".join(current), count))
    return [(text, min(n, budget)) for text, n in passages if n >= budget // 2]


def select_passages(tokenizer, texts: dict[str, list[str]], length: int, count: int) -> list[Passage]:
    """`count` passages of about `length` tokens, taken round-robin over the packages in the order of `texts`.

    Fewer (with a warning) when the corpus has fewer.
    """
    pools = {name: pack_passages(tokenizer, paragraphs, length) for name, paragraphs in texts.items()}
    chosen: list[Passage] = []
    depth = 0
    while len(chosen) < count and any(len(pool) > depth for pool in pools.values()):
        for name, pool in pools.items():
            if depth < len(pool) and len(chosen) < count:
                chosen.append(Passage(name, *pool[depth]))
        depth += 1
    if len(chosen) < count:
        logger.warning(f"only {len(chosen)} passages of ~{length} tokens available (asked for {count})")
    return chosen


def passage_batches(tokenizer, texts: Sequence[str], length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches of `batch_size` texts: truncated and right-padded to exactly `length` tokens."""
    if length < 3 or batch_size < 1:
        raise ValueError(f"`length` must be >= 3 and `batch_size` >= 1, got {length} and {batch_size}.")
    tokenizer.padding_side = "right"
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
        batches.append({key: encoded[key] for key in keys})
    return batches


__all__ = [
    "TEXT_PACKAGES",
    "Passage",
    "clean_paragraphs",
    "gather_texts",
    "pack_passages",
    "package_description",
    "passage_batches",
    "select_passages",
    "split_sentences",
]
