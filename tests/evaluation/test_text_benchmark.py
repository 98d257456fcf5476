"""The text benchmark: sentence embeddings as sentence-transformers computes them, quality against the stock
model, the interleaved timing of every setting, and `scripts/benchmark_text.py` end to end on a tiny BERT."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import BertModel

from turbo_hf import apply_turbo, remove_turbo
from turbo_hf.modeling.patching import get_turbo_config
from turbo_hf.evaluation.text_benchmark import (
    embed,
    embedding_quality,
    installed_model_folder,
    nearest_neighbours,
    neighbour_margin,
    sentence_embedding,
    text_settings,
    time_settings,
)
from turbo_hf.evaluation.text_corpus import passage_batches
from turbo_hf.testing.tiny_models import bert_config, bert_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_text.py"
WORDS = ("the a model of tokens merge passage text is and to in for with that it on as are by this be from or "
         "an which can you not at".split())
TEXTS = [
    "The model merges the tokens of a passage.",
    "A passage of text is read by the model, and it can merge tokens.",
    "This is not that.",
    "Tokens are merged in the text for the model which you can read.",
    "It is on the passage.",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random BERT (3 layers, vocabulary of 99) and its word-level tokenizer, saved together."""
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(bert_config()).eval().save_pretrained(path)
    bert_tokenizer(WORDS).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    return BertModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return bert_tokenizer(WORDS)


def test_sentence_embedding_is_sentence_transformers_mean_pooling(folder, model, tokenizer):
    reference = SentenceTransformer(
        modules=[Transformer(str(folder), max_seq_length=24),
                 Pooling(model.config.hidden_size, pooling_mode="mean"), Normalize()],
        device="cpu",
    )
    expected = reference.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    embeddings, tokens = embed(model, passage_batches(tokenizer, TEXTS, 24, batch_size=3))
    assert tokens == 24 and embeddings.shape == expected.shape == (5, 32)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)


def test_merged_embedding_is_the_size_weighted_mean_of_the_merged_tokens(model, tokenizer):
    batch = passage_batches(tokenizer, TEXTS, 24, batch_size=5)[0]
    apply_turbo(model, r=3)
    try:
        with torch.inference_mode():
            output = model(**batch)
    finally:
        remove_turbo(model)
    assert output.last_hidden_state.shape[1] < 24
    size = output.token_sizes * output.token_mask[..., None]
    weighted = (output.last_hidden_state * size).sum(1) / size.sum(1)
    torch.testing.assert_close(sentence_embedding(output, batch["attention_mask"]), F.normalize(weighted, dim=-1),
                               atol=1e-5, rtol=1e-5)


def test_r0_is_the_stock_embedding_with_cosine_one_and_the_same_neighbours(model, tokenizer):
    batches = passage_batches(tokenizer, TEXTS, 24, batch_size=2)
    reference, _ = embed(model, batches)
    apply_turbo(model, r=0)
    try:
        embeddings, tokens = embed(model, batches)
    finally:
        remove_turbo(model)
    assert tokens == 24 and torch.equal(embeddings, reference)
    quality = embedding_quality(embeddings, reference)
    assert quality["cos_min"] == pytest.approx(1.0, abs=1e-6) and quality["cos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert quality["nn_agreement"] == quality["nn_agreement_query_vs_stock_index"] == 1.0
    assert len(quality["cos_per_passage"]) == 5


def test_neighbours_margin_and_agreement_on_hand_made_embeddings():
    reference = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0]]), dim=-1)
    assert nearest_neighbours(reference, reference).tolist() == [1, 0, 3, 2]
    margin = neighbour_margin(reference)
    cosine = reference @ reference.T
    assert margin[0] == pytest.approx((cosine[0, 1] - cosine[0, 3]).item())
    moved = reference.clone()
    moved[3] = F.normalize(torch.tensor([1.0, 0.3]), dim=0)  # row 3 moves next to rows 0 and 1
    quality = embedding_quality(moved, reference)
    assert quality["nn_agreement"] == quality["nn_agreement_query_vs_stock_index"] == 0.75  # only row 3 changes
    assert quality["cos_per_passage"][:3] == [1.0, 1.0, 1.0]
    assert quality["cos_min"] == pytest.approx((moved[3] @ reference[3]).item()) and quality["cos_min"] < 0.5


def test_timing_rounds_rotate_and_apply_each_setting_before_its_call(model, tokenizer):
    settings = text_settings([2], ["tome", "turbo"])
    assert [s.name for s in settings] == ["stock", "tome r=2", "turbo r=2"]
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args: seen.append(getattr(get_turbo_config(module), "mode", "stock"))
    )
    try:
        times = time_settings(model, settings, passage_batches(tokenizer, TEXTS[:2], 16, 2)[0], repeats=2, warmup=1)
    finally:
        hook.remove()
    assert seen == ["stock", "tome", "turbo", "tome", "turbo", "stock", "turbo", "stock", "tome"]
    assert {name: (len(t["wall"]), len(t["cpu"])) for name, t in times.items()} == {s.name: (2, 2) for s in settings}
    assert type(model) is BertModel  # left stock


def test_a_missing_model_package_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match="pip install no-such-model"):
        installed_model_folder("no_such_model_package_for_turbo_hf", "no-such-model")


def test_script_quick_run_on_a_tiny_bert_writes_json_and_markdown(folder, tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_text", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "text_tiny"
    result = script.main(["--model", str(folder), "--lengths", "32", "--r", "2,4", "--batch-size", "8", "--quick",
                          "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["settings"]["reductions"] == {"32": [2, 4]} and saved["settings"]["repeats"] == 1
    assert saved["metadata"]["model"]["folder"] == str(folder) and saved["text_sources"]
    (block,) = saved["lengths"]
    assert block["length"] == 32 and block["passages"] == 16 and block["timing_batch"] == 8
    assert [row["setting"] for row in block["rows"]] == [f"{mode} r={r}" for r in (2, 4)
                                                          for mode in ("tome", "turbo", "random")]
    for row in block["rows"]:
        assert row["output_tokens"] == row["token_counts"][-1] == 32 - 3 * row["r"]  # 3 layers
        assert row["speedup"] == pytest.approx(block["stock_seconds"] / row["seconds"])
        assert row["speedup_cpu"] == pytest.approx(block["stock_cpu_seconds"] / row["cpu_seconds"])
        assert len(row["seconds_samples"]) == 1 and len(row["cos_per_passage"]) == 16
        assert -1 <= row["cos_min"] <= row["cos_p05"] <= row["cos_mean"] <= 1 + 1e-6
    assert block["rows"][0]["alpha"] is None and block["rows"][1]["alpha"] is not None
    assert result["lengths"][0]["passages_sha256"] == block["passages_sha256"]
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith(f"# Turbo on text: {folder}") and "## 32 tokens" in markdown
    assert "| turbo r=4 |" in markdown and "Side by side at 32 tokens" in markdown and "with 1 threads" in markdown
