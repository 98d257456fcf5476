"""The text corpus of the text benchmark: README cleaning, sentences, passage packing and selection, batches."""

import logging

import pytest
import transformers

from turbo_hf.evaluation.text_corpus import (
    Passage,
    clean_paragraphs,
    gather_texts,
    pack_passages,
    package_description,
    passage_batches,
    select_passages,
    split_sentences,
)
from turbo_hf.testing.tiny_models import bert_tokenizer

README = """\
Project title
=============

.. image:: https://img.shields.io/badge/ci-passing-green.svg
   :target: https://ci.example.org

The library reads `the documentation <https://docs.example.org>`_ and packs every sentence of it into passages
that a model can read. It keeps the prose and drops what is not prose, as the next lines show.

Install it like this::

    pip install project --upgrade

```python
import project
project.run(fast=True)
```

| option | meaning |
| --- | --- |
| fast | runs in half the time of the slow mode for every input |

Visit https://example.org/a/very/long/path for more, or read the [guide](https://example.org/guide) which tells
you how the packing works and why the passages are never longer than their budget.

- Fix the parser for long lines in the reader by @someone in #1234 and #1235, with thanks to all who helped.

Short line.
"""


def test_cleaning_keeps_prose_and_drops_code_tables_urls_and_release_notes():
    paragraphs = clean_paragraphs(README)
    assert paragraphs == [
        "The library reads the documentation and packs every sentence of it into passages that a model can read. "
        "It keeps the prose and drops what is not prose, as the next lines show.",
        "Visit for more, or read the guide which tells you how the packing works and why the passages are never "
        "longer than their budget.",
    ]
    text = " ".join(paragraphs)
    for dropped in ("http", "pip install", "import project", "| option", "half the time", "Project title",
                    "@someone", "Install it like this", "Short line"):
        assert dropped not in text


def test_literal_block_intro_is_kept_as_a_sentence_when_it_is_prose():
    intro = "This paragraph explains at length what the following example does with every one of its inputs::"
    assert clean_paragraphs(intro + "\n\n    code()\n") == [intro[:-2] + ":"]


def test_sentences_split_after_end_punctuation_before_a_capital_digit_or_quote():
    assert split_sentences('One is here. Two follows! "Three" is quoted? 4 is a digit. e.g. stays') == [
        "One is here.", "Two follows!", '"Three" is quoted?', "4 is a digit. e.g. stays"]


WORDS = "one two three four five six seven eight nine ten".split()


@pytest.fixture(scope="module")
def tokenizer():
    return bert_tokenizer(WORDS)


def _paragraph(words_per_sentence: list[int]) -> str:
    """Sentences of n words ("One two ... ten."), each n + 1 word pieces (the tokenizer lower-cases)."""
    return " ".join(" ".join(WORDS[:n - 1]).capitalize() + " ten." for n in words_per_sentence)


def test_passages_are_packed_by_sentence_within_the_length(tokenizer):
    # each word and each "." is one word piece: a sentence of n words has n + 1 pieces
    paragraphs = [_paragraph([5, 3, 7, 2, 9]), _paragraph([4, 4, 4, 8])]
    length = 16  # budget 14 word pieces
    passages = pack_passages(tokenizer, paragraphs, length)
    sentences = [s for p in paragraphs for s in split_sentences(p)]
    assert " ".join(text for text, _ in passages) == " ".join(sentences)  # in order, nothing lost here
    for text, count in passages:
        assert count == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert 14 // 2 <= count <= 14
    assert [count for _, count in passages] == [10, 11, 10, 10, 14]  # greedy: the next sentence would not fit


def test_a_long_sentence_is_capped_and_short_leftovers_dropped(tokenizer):
    long_sentence = " ".join(WORDS * 3) + "."  # 31 word pieces
    passages = pack_passages(tokenizer, [long_sentence + " One two."], 16)
    assert passages == [(long_sentence, 14)]  # alone over the budget: counted as the budget; "One two." (3) dropped


def test_selection_is_round_robin_and_deterministic(tokenizer, caplog):
    texts = {"a": [_paragraph([6, 6, 6, 6, 6, 6])], "b": [_paragraph([6, 6])], "c": [_paragraph([6, 6, 6, 6])]}
    chosen = select_passages(tokenizer, texts, 16, 5)
    assert all(isinstance(p, Passage) for p in chosen)
    assert [p.package for p in chosen] == ["a", "b", "c", "a", "c"]
    assert chosen == select_passages(tokenizer, texts, 16, 5)
    assert select_passages(tokenizer, texts, 16, 3) == chosen[:3]
    with caplog.at_level(logging.WARNING, logger="turbo_hf.evaluation.text_corpus"):
        everything = select_passages(tokenizer, texts, 16, 100)
    assert len(everything) == 6 and "only 6 passages" in caplog.text


def test_batches_are_right_padded_and_truncated_to_the_length(tokenizer):
    batches = passage_batches(tokenizer, ["one two.", " ".join(WORDS * 3), "three."], 8, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (1, 8)]
    mask = batches[0]["attention_mask"]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0] and mask[1].sum() == 8
    assert batches[0]["input_ids"][1, -1] == tokenizer.sep_token_id
    with pytest.raises(ValueError, match="`length` must be >= 3"):
        passage_batches(tokenizer, ["one"], 2, 1)


def test_installed_package_descriptions():
    body, version = package_description("transformers")
    assert version == transformers.__version__ and len(body) > 1000
    assert package_description("no-such-package-for-turbo-hf") is None
    texts, versions = gather_texts(["transformers", "no-such-package-for-turbo-hf"])
    assert list(texts) == list(versions) == ["transformers"]
    assert len(texts["transformers"]) >= 5 and all("http" not in p for p in texts["transformers"])
