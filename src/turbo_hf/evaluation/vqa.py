"""VQA v2 accuracy of the official evaluation (`vqaEval.py`), with its answer normaliser.

The prediction is normalised (punctuation, number words, articles, contractions), compared to the human
answers, and `min(#matches / 3, 1)` is averaged over the 10 leave-one-out subsets of 9 answers. The official
code ships with no installable package, so the normaliser's tables and steps are kept here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

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
    >>> from turbo_hf.evaluation.vqa import vqa_normalize
    >>> vqa_normalize("Two dogs!"), vqa_normalize("dont know")
    ('2 dogs', "don't know")
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
    >>> from turbo_hf.evaluation.vqa import vqa_accuracy
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


__all__ = ["vqa_accuracy", "vqa_normalize", "vqa_process_digit_article", "vqa_process_punctuation", "vqa_score"]
