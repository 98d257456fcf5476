"""Evaluation metrics in pure Python/numpy: retrieval recall, BLEU, CIDEr-D, ROUGE-L, VQA accuracy.

Caption metrics follow the COCO caption evaluation code (`pycocoevalcap`) operation for operation:

- `bleu`: corpus BLEU-1..4 with the "closest" reference length, the `tiny`/`small` smoothing constants and
  the corpus brevity penalty of `pycocoevalcap.bleu` (which reports corpus-level, not averaged, BLEU).
- `cider_d`: CIDEr-D of `pycocoevalcap.cider`: tf-idf vectors over n = 1..4 with document frequencies taken
  from the reference sets of the evaluated images, clipped hypothesis weights, a Gaussian length penalty
  (sigma = 6), the mean over n, the mean over references, times 10.
- `rouge_l`: ROUGE-L of `pycocoevalcap.rouge` (LCS precision/recall, beta = 1.2, best over references).

They take already tokenised, space-separated strings; `tokenize_caption` stands in for the Stanford PTB
tokenizer (Java) that `pycocoevalcap` runs first: lower case, clitics split off, the same punctuation tokens
dropped. On ordinary captions it gives the same tokens; on rare constructs (URLs, abbreviations with inner
periods) the two can differ.

`vqa_accuracy` is the VQA v2 accuracy of the official evaluation (`vqaEval.py`): the prediction is normalised
(punctuation, number words, articles, contractions), compared to the human answers, and
`min(#matches / 3, 1)` is averaged over the 10 leave-one-out subsets of 9 answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

# ------------------------------------------------------------------------------------------ retrieval


def retrieval_recall(
    similarity: np.ndarray, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k in both directions for image-text retrieval, in percent.

    Args:
        similarity: (num_images, num_texts) scores, higher is better.
        text_to_image: for every text (column), the index of the image it describes. An image may have
            several texts; every text has exactly one image.
        ks: the cut-offs.

    Returns:
        `{"i2t_R@k": ..., "t2i_R@k": ..., "i2t_mean": ..., "t2i_mean": ..., "rsum": ...}`. Image-to-text:
        an image counts as found at k when ANY of its texts ranks in its top k (the COCO/Flickr protocol);
        text-to-image: a text counts when its image ranks in its top k. Ties are broken pessimistically
        (a tied wrong item ranks before the right one).

    Example:

    ```python
    >>> import numpy as np
    >>> from turbo_hf.evaluation.metrics import retrieval_recall
    >>> sim = np.array([[0.9, 0.1, 0.99], [0.2, 0.7, 0.95]])
    >>> retrieval_recall(sim, [0, 1, 1], ks=(1,))
    {'i2t_R@1': 50.0, 't2i_R@1': 66.66666666666666, 'i2t_mean': 50.0, 't2i_mean': 66.66666666666666, 'rsum': 116.66666666666666}
    ```
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    num_images, num_texts = similarity.shape
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"`text_to_image` needs one image index per text ({num_texts}), got {text_to_image.shape}.")
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError("`text_to_image` holds an index outside the images.")
    # image -> text: rank of the best-ranked correct text = number of wrong texts scoring >= it
    i2t_ranks = np.empty(num_images, dtype=np.int64)
    for image in range(num_images):
        scores = similarity[image]
        correct = text_to_image == image
        if not correct.any():
            raise ValueError(f"Image {image} has no text.")
        best = scores[correct].max()
        i2t_ranks[image] = int(((scores >= best) & ~correct).sum())
    # text -> image: rank of the correct image = number of other images scoring >= it
    t2i_ranks = np.empty(num_texts, dtype=np.int64)
    for text in range(num_texts):
        scores = similarity[:, text]
        target = scores[text_to_image[text]]
        t2i_ranks[text] = int((scores >= target).sum()) - 1
    result: dict[str, float] = {}
    for k in ks:
        result[f"i2t_R@{k}"] = 100.0 * float((i2t_ranks < k).mean())
    for k in ks:
        result[f"t2i_R@{k}"] = 100.0 * float((t2i_ranks < k).mean())
    result["i2t_mean"] = float(np.mean([result[f"i2t_R@{k}"] for k in ks]))
    result["t2i_mean"] = float(np.mean([result[f"t2i_R@{k}"] for k in ks]))
    result["rsum"] = float(sum(result[f"i2t_R@{k}"] + result[f"t2i_R@{k}"] for k in ks))
    return result


# ------------------------------------------------------------------------------------------ captions

# Tokens the COCO caption evaluation removes after PTB tokenisation.
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_CLITICS = re.compile(r"(?i)(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_TOKEN = re.compile(r"\w+(?:[-'.]\w+)*|'\w+|\.\.\.|--|[^\w\s]")


def tokenize_caption(text: str) -> str:
    """A caption as the COCO evaluation sees it: PTB-style tokens, lower case, punctuation tokens dropped.

    Example:

    ```python
    >>> from turbo_hf.evaluation.metrics import tokenize_caption
    >>> tokenize_caption("A man's dog, sitting on the grass.")
    "a man 's dog sitting on the grass"
    ```
    """
    text = text.replace("\n", " ").lower()
    text = _CLITICS.sub(r"\1 \2", text)
    tokens = []
    for token in _TOKEN.findall(text):
        token = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", '"': "''"}.get(token, token)
        if token not in PTB_PUNCTUATION:
            tokens.append(token)
    return " ".join(tokens)


def _ngram_counts(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _check_pairs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference sets.")
    if not predictions:
        raise ValueError("No captions to score.")
    for refs in references:
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError("Every prediction needs a non-empty list of reference strings.")


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as computed by `pycocoevalcap` (option "closest"), as fractions in [0, 1].

    Args:
        predictions: one tokenised caption per image.
        references: the tokenised reference captions of each image.

    Example:

    ```python
    >>> from turbo_hf.evaluation.metrics import bleu
    >>> [round(b, 4) for b in bleu(["a cat sits on a mat"], [["a cat sits on a mat", "a cat"]])]
    [1.0, 1.0, 1.0, 1.0]
    ```
    """
    _check_pairs(predictions, references)
    small, tiny = 1e-9, 1e-15
    guess, correct = [0] * n, [0] * n
    test_total, ref_total = 0, 0
    for prediction, refs in zip(predictions, references):
        words = prediction.split()
        counts = _ngram_counts(words, n)
        max_ref: dict[tuple, int] = {}
        ref_lengths = []
        for ref in refs:
            ref_words = ref.split()
            ref_lengths.append(len(ref_words))
            for ngram, count in _ngram_counts(ref_words, n).items():
                max_ref[ngram] = max(max_ref.get(ngram, 0), count)
        length = len(words)
        test_total += length
        ref_total += min((abs(l - length), l) for l in ref_lengths)[1]
        for k in range(n):
            guess[k] += max(0, length - k)
        for ngram, count in counts.items():
            correct[len(ngram) - 1] += min(max_ref.get(ngram, 0), count)
    scores = []
    ratio = (test_total + tiny) / (ref_total + small)
    for order in range(1, n + 1):
        product = 1.0
        for k in range(order):
            product *= (correct[k] + tiny) / (guess[k] + small)
        score = product ** (1.0 / order)
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        scores.append(score)
    return scores


def cider_d(
    predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D exactly as `pycocoevalcap.cider` computes it (the COCO leaderboard's "CIDEr").

    Document frequencies come from the reference sets of the images given (so the score of a caption
    depends on the whole evaluated set, as in the original).

    Returns:
        (corpus score, per-image scores); both on the usual scale (x10: a perfect caption of 4+ words made of
        n-grams no other image's references use scores 10; leaderboard tables show x100 of the fraction, e.g. "133.3" for 1.333).

    Example:

    ```python
    >>> from turbo_hf.evaluation.metrics import cider_d
    >>> round(cider_d(["a red bus", "two dogs play"], [["a red bus"], ["two dogs play"]])[0], 6)  # no 4-grams
    7.5
    ```
    """
    _check_pairs(predictions, references)
    ref_counts = [[_ngram_counts(ref.split(), n) for ref in refs] for refs in references]
    test_counts = [_ngram_counts(p.split(), n) for p in predictions]
    document_frequency: defaultdict[tuple, float] = defaultdict(float)
    for refs in ref_counts:
        for ngram in {ngram for ref in refs for ngram in ref}:
            document_frequency[ngram] += 1
    ref_len = np.log(float(len(ref_counts)))

    def to_vector(counts: Counter):
        vec = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, term_freq in counts.items():
            df = np.log(max(1.0, document_frequency[ngram]))
            order = len(ngram) - 1
            vec[order][ngram] = float(term_freq) * (ref_len - df)
            norm[order] += vec[order][ngram] ** 2
            if order == 1:  # pycocoevalcap counts bigrams as the "length" (kept for identical scores)
                length += term_freq
        return vec, [np.sqrt(v) for v in norm], length

    def similarity(hyp, ref) -> np.ndarray:
        (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
        delta = float(len_h - len_r)
        values = np.zeros(n)
        for order in range(n):
            for ngram in vec_h[order]:
                values[order] += min(vec_h[order][ngram], vec_r[order].get(ngram, 0.0)) * vec_r[order].get(ngram, 0.0)
            if norm_h[order] != 0 and norm_r[order] != 0:
                values[order] /= norm_h[order] * norm_r[order]
            values[order] *= np.e ** (-(delta**2) / (2 * sigma**2))
        return values

    scores = []
    for test, refs in zip(test_counts, ref_counts):
        hyp = to_vector(test)
        total = np.zeros(n)
        for ref in refs:
            total += similarity(hyp, to_vector(ref))
        scores.append(float(np.mean(total) / len(refs) * 10.0))
    return float(np.mean(scores)), scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> tuple[float, list[float]]:
    """ROUGE-L of `pycocoevalcap.rouge`: F-measure (beta = 1.2) of the best LCS precision and recall.

    Example:

    ```python
    >>> from turbo_hf.evaluation.metrics import rouge_l
    >>> round(rouge_l(["a cat on a mat"], [["a cat sat on the mat"]])[0], 4)
    0.7155
    ```
    """
    _check_pairs(predictions, references)
    scores = []
    for prediction, refs in zip(predictions, references):
        candidate = prediction.split(" ")
        precisions, recalls = [], []
        for ref in refs:
            tokens = ref.split(" ")
            lcs = _lcs(tokens, candidate)
            precisions.append(lcs / float(len(candidate)))
            recalls.append(lcs / float(len(tokens)))
        p, r = max(precisions), max(recalls)
        scores.append(((1 + beta**2) * p * r) / float(r + beta**2 * p) if p != 0 and r != 0 else 0.0)
    return float(np.mean(scores)), scores


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True) -> dict:
    """BLEU-1..4, CIDEr(-D) and ROUGE-L of raw captions (tokenised with `tokenize_caption` first).

    BLEU and ROUGE-L are fractions in [0, 1]; CIDEr is on the x10 scale of `cider_d`. Leaderboards print
    all of them x100.
    """
    if tokenize:
        predictions = [tokenize_caption(p) for p in predictions]
        references = [[tokenize_caption(r) for r in refs] for refs in references]
    bleus = bleu(predictions, references)
    cider, per_image = cider_d(predictions, references)
    rouge, _ = rouge_l(predictions, references)
    result = {f"BLEU-{k + 1}": value for k, value in enumerate(bleus)}
    result.update({"CIDEr": cider, "ROUGE-L": rouge})
    result["CIDEr_per_image"] = per_image
    return result


# ------------------------------------------------------------------------------------------------ VQA

VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
VQA_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
VQA_ARTICLES = ("a", "an", "the")
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern (a mistyped look-behind)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def vqa_process_punctuation(text: str) -> str:
    """`processPunctuation` of the official VQA evaluation."""
    out = text
    for p in VQA_PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the official code passes re.UNICODE (32) as the positional `count`: at most 32 periods go
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def vqa_process_digit_article(text: str) -> str:
    """`processDigitArticle` of the official VQA evaluation: number words to digits, no articles, contractions."""
    words = []
    for word in text.lower().split():
        word = VQA_NUMBERS.get(word, word)
        if word not in VQA_ARTICLES:
            words.append(word)
    return " ".join(VQA_CONTRACTIONS.get(word, word) for word in words)


def vqa_normalize(answer: str) -> str:
    """A predicted answer normalised as the official evaluation does before comparing it.

    Example:

    ```python
    >>> from turbo_hf.evaluation.metrics import vqa_normalize
    >>> vqa_normalize("Two dogs!")
    '2 dogs'
    ```
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(answer))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA v2 accuracy of one prediction against the human answers (usually 10), in [0, 1].

    As the official `vqaEval.py`: the prediction is normalised (`vqa_normalize`); the human answers get the
    punctuation step only, and only when they are not all identical; then for each human answer, the others
    that equal the prediction give `min(matches / 3, 1)`, averaged over all humans (the 10 choose 9 subsets).

    Example:

    ```python
    >>> from turbo_hf.evaluation.metrics import vqa_accuracy
    >>> vqa_accuracy("two", ["2"] * 2 + ["3"] * 8)  # 2 of 10 humans: 8 subsets see 2 matches, 2 see 1
    0.6
    ```
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError("`answers` must be a non-empty list of human answers.")
    predicted = vqa_normalize(prediction)
    humans = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(humans)) > 1:
        humans = [vqa_process_punctuation(a) for a in humans]
    scores = []
    for i in range(len(humans)):
        matches = sum(1 for j, answer in enumerate(humans) if j != i and answer == predicted)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """Mean VQA accuracy in percent, and the per-question accuracies (fractions)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists.")
    if not predictions:
        raise ValueError("No answers to score.")
    per_question = [vqa_accuracy(p, a) for p, a in zip(predictions, answers)]
    return 100.0 * float(np.mean(per_question)), per_question


# ------------------------------------------------------------------------------------- classification


def topk_accuracy(logits: np.ndarray, labels: Sequence[int], k: int = 1) -> float:
    """Top-k accuracy in percent (a sample counts when its label is among the k highest logits)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels.")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return 100.0 * float((top == labels[:, None]).any(axis=1).mean())


__all__ = [
    "PTB_PUNCTUATION",
    "bleu",
    "caption_scores",
    "cider_d",
    "retrieval_recall",
    "rouge_l",
    "tokenize_caption",
    "topk_accuracy",
    "vqa_accuracy",
    "vqa_normalize",
    "vqa_score",
]
