"""Metrics (our wrappers of pycocoevalcap, our tokeniser and VQA normaliser) against values computed by hand."""

import math

import numpy as np
import pytest

from turbo_hf.evaluation.captions import bleu, caption_scores, cider_d, rouge_l, tokenize_caption
from turbo_hf.evaluation.metrics import retrieval_recall, topk_accuracy
from turbo_hf.evaluation.vqa import vqa_accuracy, vqa_normalize, vqa_score

# ------------------------------------------------------------------------------------------ retrieval


def test_retrieval_recall_by_hand():
    # 3 images; texts 0,1 -> image 0, text 2 -> image 1, texts 3,4 -> image 2
    text_to_image = [0, 0, 1, 2, 2]
    sim = np.array(
        [
            [0.1, 0.9, 0.8, 0.0, 0.2],  # image 0: best text 1 is correct -> rank 0
            [0.7, 0.1, 0.3, 0.2, 0.6],  # image 1: its text 2 (0.3) is beaten by 0.7 and 0.6 -> rank 2
            [0.5, 0.4, 0.9, 0.3, 0.1],  # image 2: texts 3 (0.3), 4 (0.1): beaten by 0.5, 0.4, 0.9 -> rank 3
        ]
    )
    result = retrieval_recall(sim, text_to_image, ks=(1, 3))
    assert result["i2t_R@1"] == pytest.approx(100 / 3)
    assert result["i2t_R@3"] == pytest.approx(200 / 3)
    # text -> image: column ranks of the right image
    # t0: [0.1, 0.7, 0.5] image 0 -> rank 2; t1: [0.9, 0.1, 0.4] -> 0; t2: [0.8, 0.3, 0.9] image 1 -> 2;
    # t3: [0.0, 0.2, 0.3] image 2 -> 0; t4: [0.2, 0.6, 0.1] image 2 -> 2
    assert result["t2i_R@1"] == pytest.approx(40.0)
    assert result["t2i_R@3"] == pytest.approx(100.0)
    assert result["rsum"] == pytest.approx(100 / 3 + 200 / 3 + 40 + 100)


def test_retrieval_ties_count_against_the_model():
    sim = np.array([[0.5, 0.5], [0.5, 0.5]])
    result = retrieval_recall(sim, [0, 1], ks=(1, 2))
    assert result["i2t_R@1"] == 0.0 and result["t2i_R@1"] == 0.0
    assert result["i2t_R@2"] == 100.0 and result["t2i_R@2"] == 100.0


def test_retrieval_checks_its_inputs():
    with pytest.raises(ValueError, match="one image index per text"):
        retrieval_recall(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="has no text"):
        retrieval_recall(np.zeros((2, 2)), [0, 0])


# ------------------------------------------------------------------------------------------- captions


def test_tokenizer_follows_the_coco_ptb_conventions():
    assert tokenize_caption("A man's dog, sitting on the grass.") == "a man 's dog sitting on the grass"
    assert tokenize_caption("Two people don't SMILE!") == "two people do n't smile"
    assert tokenize_caption('A "big" t-shirt (red) ...') == "a big t-shirt red"
    assert tokenize_caption("It costs 3.5 dollars") == "it costs 3.5 dollars"


def test_bleu_by_hand():
    # the cat sat on the mat / the cat is on the mat: p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3
    b1, b2, b3, b4 = bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert b1 == pytest.approx(5 / 6)
    assert b2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b3 == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert b4 < 1e-3  # no 4-gram matches: only the 1e-15 smoothing remains
    # p1 = 5/6 (the second "the" is clipped), p2 = 3/5, p3 = 2/4, p4 = 1/3, equal lengths
    b4 = bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])[3]
    assert b4 == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)


def test_bleu_brevity_penalty_uses_the_closest_reference_length():
    assert bleu(["a cat"], [["a cat on a mat"]])[1] == pytest.approx(math.exp(1 - 5 / 2))
    # lengths 2 and 6 around a 5-word candidate: 6 is closest -> BP exp(1 - 6/5)
    b1 = bleu(["one two three four five"], [["one two", "one two three four five six"]])[0]
    assert b1 == pytest.approx(math.exp(1 - 6 / 5))
    # equally close (3 and 7 around 5): the shorter one wins, no penalty
    assert bleu(["a b c d e"], [["a b c", "a b c d e f g"]])[0] == pytest.approx(1.0)


def test_bleu_is_corpus_level():
    # counts are summed over sentences before the precisions: p1 = (2 + 1) / (2 + 2)
    b1 = bleu(["a b", "c x"], [["a b"], ["c d"]])[0]
    assert b1 == pytest.approx(3 / 4)


def test_cider_by_hand():
    # two images; df of every n-gram is 1, log(N) = log 2
    # image 1: "a c" vs "a b": unigram cosine (log2^2) / (sqrt2 log2)^2 = 1/2, no bigram match -> 10 * 0.5 / 4
    # image 2: identical 2-word caption: unigram and bigram cosine 1, no 3/4-grams -> 10 * 2 / 4
    score, per_image = cider_d(["a c", "c d"], [["a b"], ["c d"]])
    assert per_image == pytest.approx([1.25, 5.0])
    assert score == pytest.approx(3.125)


def test_cider_clipping_and_length_penalty_by_hand():
    # image 2 predicts "c d d" against "c d":
    #  n=1: hyp c:log2, d:2log2 (clipped to log2 in the numerator), ref c,d: log2 -> 2 / sqrt(5 * 2)
    #  n=2: hyp (c,d):log2, (d,d): log2 (df 0 -> idf log 2), ref (c,d): log2 -> 1 / sqrt(2)
    #  n=3: the reference has no trigram -> 0;  length (bigram count) 2 vs 1 -> exp(-1 / (2 * 36))
    _, per_image = cider_d(["a b", "c d d"], [["a b"], ["c d"]])
    expected = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert per_image[1] == pytest.approx(expected)


def test_cider_averages_over_references_and_uses_the_reference_document_frequencies():
    # "a" appears in the references of both images -> idf log(2/2) = 0, it carries no weight
    _, per_image = cider_d(["a x y", "a z"], [["a x y", "a q"], ["a z"]])
    # image 1, ref 1 "a x y": n=1 cos 1 (a has weight 0), n=2: (a,x),(x,y) identical -> 1, n=3 -> 1
    # ref 2 "a q": hyp weights x,y vs q: 0; lengths 2 vs 1 bigram -> 0 anyway. mean over refs -> /2
    assert per_image[0] == pytest.approx(10 * (1 + 1 + 1) / 4 / 2)


def test_rouge_l_by_hand():
    # LCS("a cat on a mat", "a cat sat on the mat") = 4: P = 4/5, R = 4/6, beta = 1.2
    p, r, beta2 = 4 / 5, 4 / 6, 1.2**2
    score, _ = rouge_l(["a cat on a mat"], [["a cat sat on the mat", "dog"]])
    assert score == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))


def test_caption_scores_tokenise_first():
    scores = caption_scores(["A red bus, parked."], [["a red bus parked"]])
    assert scores["BLEU-4"] == pytest.approx(1.0)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference"):
        caption_scores(["x"], [[]])


# ------------------------------------------------------------------------------------------------ VQA


def test_vqa_accuracy_leave_one_out():
    assert vqa_accuracy("Yes.", ["yes"] * 10) == pytest.approx(1.0)
    # 2 of 10 humans: their 2 subsets hold 1 match (1/3), the other 8 hold 2 (2/3)
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 / 3 + 8 * 2 / 3) / 10)
    # 3 of 10: 3 subsets see 2 matches (2/3), 7 see 3 (1)
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("bird", ["cat"] * 10) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


def test_vqa_answer_normalisation():
    assert vqa_normalize("A dog") == "dog"
    assert vqa_normalize("None") == "0"
    assert vqa_normalize("dont know") == "don't know"
    assert vqa_normalize("1,000") == "1000"
    assert vqa_normalize("3.5") == "3.5"
    assert vqa_normalize("yes!") == "yes"
    # human answers only get the punctuation step, and only when they disagree (as the official code)
    assert vqa_accuracy("t shirt", ["t-shirt"] * 4 + ["shirt"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("t shirt", ["t-shirt"] * 10) == 0.0
    assert vqa_accuracy("two", ["two"] * 10) == 0.0  # VQA v2 answers are stored normalised ("2")


def test_vqa_score_is_a_percentage():
    score, per_question = vqa_score(["yes", "no"], [["yes"] * 10, ["yes"] * 10])
    assert score == pytest.approx(50.0) and per_question == [1.0, 0.0]


def test_topk_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_accuracy(logits, [1, 2, 2], 1) == pytest.approx(200 / 3)
    assert topk_accuracy(logits, [1, 2, 0], 2) == pytest.approx(200 / 3)
