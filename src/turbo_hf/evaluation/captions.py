"""Caption metrics of the COCO caption evaluation: BLEU-1..4, CIDEr-D and ROUGE-L from `pycocoevalcap`.

The scores are those of `pycocoevalcap`'s scorers (`Bleu`, `Cider`, `Rouge`), which take already tokenised,
space-separated strings. `tokenize_caption` stands in for the Stanford PTB tokenizer (Java) that
`pycocoevalcap` runs first: lower case, clitics split off, the same punctuation tokens dropped. On ordinary
captions it gives the same tokens; on rare constructs (URLs, abbreviations with inner periods) the two can
differ.

`pycocoevalcap` is in the `eval` extra (`pip install "turbo-hf[eval]"`); it is imported when a score is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Tokens the COCO caption evaluation removes after PTB tokenisation.
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_CLITICS = re.compile(r"(?i)(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_TOKEN = re.compile(r"\w+(?:[-'.]\w+)*|'\w+|\.\.\.|--|[^\w\s]")
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", '"': "''"}


def tokenize_caption(text: str) -> str:
    """A caption as the COCO evaluation sees it: PTB-style tokens, lower case, punctuation tokens dropped.

    Example:

    ```python
    >>> from turbo_hf.evaluation.captions import tokenize_caption
    >>> tokenize_caption("A man's dog, sitting on the grass.")
    "a man 's dog sitting on the grass"
    ```
    """
    text = _CLITICS.sub(r"\1 \2", text.replace("\n", " ").lower())
    tokens = (_BRACKETS.get(token, token) for token in _TOKEN.findall(text))
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATION)


def _as_coco(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """(references, predictions) as the `{image id: [sentences]}` dicts of `pycocoevalcap`, checked first."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference sets.")
    if not predictions:
        raise ValueError("No captions to score.")
    for refs in references:
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError("Every prediction needs a non-empty list of reference strings.")
    return ({i: list(refs) for i, refs in enumerate(references)},
            {i: [prediction] for i, prediction in enumerate(predictions)})


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of `pycocoevalcap.bleu` (option "closest"), as fractions in [0, 1].

    Args:
        predictions: one tokenised caption per image.
        references: the tokenised reference captions of each image.

    Example:

    ```python
    >>> from turbo_hf.evaluation.captions import bleu
    >>> [round(b, 4) for b in bleu(["a cat sits on a mat"], [["a cat sits on a mat", "a cat"]])]
    [1.0, 1.0, 1.0, 1.0]
    ```
    """
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _as_coco(predictions, references)
    scores, _ = Bleu(n).compute_score(gts, res, verbose=0)
    return [float(score) for score in scores]


def cider_d(
    predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D of `pycocoevalcap.cider` (the COCO leaderboard's "CIDEr").

    Document frequencies come from the reference sets of the images given (so the score of a caption
    depends on the whole evaluated set, as in the original).

    Returns:
        (corpus score, per-image scores); both on the usual scale (x10: a perfect caption of 4+ words made of
        n-grams no other image's references use scores 10; leaderboard tables show x100 of the fraction, e.g.
        "133.3" for 1.333).

    Example:

    ```python
    >>> from turbo_hf.evaluation.captions import cider_d
    >>> round(cider_d(["a red bus", "two dogs play"], [["a red bus"], ["two dogs play"]])[0], 6)  # no 4-grams
    7.5
    ```
    """
    from pycocoevalcap.cider.cider import Cider

    gts, res = _as_coco(predictions, references)
    score, per_image = Cider(n=n, sigma=sigma).compute_score(gts, res)
    return float(score), [float(value) for value in per_image]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """ROUGE-L of `pycocoevalcap.rouge`: F-measure (beta = 1.2) of the best LCS precision and recall.

    Example:

    ```python
    >>> from turbo_hf.evaluation.captions import rouge_l
    >>> round(rouge_l(["a cat on a mat"], [["a cat sat on the mat"]])[0], 4)
    0.7155
    ```
    """
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _as_coco(predictions, references)
    score, per_image = Rouge().compute_score(gts, res)
    return float(score), [float(value) for value in per_image]


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True) -> dict:
    """BLEU-1..4, CIDEr(-D) and ROUGE-L of raw captions (tokenised with `tokenize_caption` first).

    BLEU and ROUGE-L are fractions in [0, 1]; CIDEr is on the x10 scale of `cider_d`. Leaderboards print
    all of them x100.
    """
    if tokenize:
        predictions = [tokenize_caption(p) for p in predictions]
        references = [[tokenize_caption(r) for r in refs] for refs in references]
    cider, per_image = cider_d(predictions, references)
    result = {f"BLEU-{k + 1}": value for k, value in enumerate(bleu(predictions, references))}
    result.update({"CIDEr": cider, "ROUGE-L": rouge_l(predictions, references)[0], "CIDEr_per_image": per_image})
    return result


__all__ = ["PTB_PUNCTUATION", "bleu", "caption_scores", "cider_d", "rouge_l", "tokenize_caption"]
