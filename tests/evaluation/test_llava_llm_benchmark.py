"""The LLaVA in-LLM benchmark's library part on a 2-layer LLaVA-shaped model at 112 px (64 image tokens)."""

import pytest

from turbo_hf.evaluation.llava_llm_benchmark import (
    llava_prompts, llava_settings, llava_shaped_config, llava_shaped_model, run_batch,
)
from turbo_hf.evaluation.llava_llm_report import llm_markdown
from turbo_hf.evaluation.report import run_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return llava_shaped_model(text_layers=2, image_size=112)


def test_prompts_are_left_padded_with_the_image_placeholders(model):
    inputs, counts = llava_prompts(3, 64, 112)
    assert counts == [36, 40, 44]
    lengths = inputs["attention_mask"].sum(-1).tolist()
    assert lengths == [64 + count for count in counts]  # BOS USER, the image, count - 5 words, 3 closing ids
    assert bool((inputs["input_ids"] == 999).sum(-1).eq(64).all())
    assert bool(inputs["attention_mask"][:, -1].all()) and not bool(inputs["attention_mask"][0, 0])


def test_a_run_reports_reduced_caches_against_stock_and_a_page(model):
    settings = [("stock", None), ("K=1 keep 16", {"llm_layers": [1], "llm_keep": [16]})]
    result = run_batch(model, 2, settings, repeats=1, warmup=0, new_tokens=2)
    stock, reduced = result["settings"]["stock"], result["settings"]["K=1 keep 16"]
    assert stock["cache_tokens_per_layer"][0] == reduced["cache_tokens_per_layer"][0] == result["prompt_length"]
    assert reduced["cache_tokens_per_layer"][1] == result["prompt_length"] - (64 - 16)
    assert reduced["kv_cache_ratio"] < 1 and stock["prefill_speedup"] == 1.0
    assert reduced["token_layer_limit"] == pytest.approx(
        sum(stock["cache_tokens_per_layer"]) / sum(reduced["cache_tokens_per_layer"])
    )
    meta = run_metadata(model="tiny", attn="sdpa", repeats=1, warmup=0, new_tokens=2)
    page = llm_markdown({"meta": meta, "batches": [result], "runtime_s": 1.0})
    assert "| K=1 keep 16 | 64 -> 16 |" in page and "## Batch 2" in page


def test_settings_must_start_with_the_stock_model(model):
    with pytest.raises(ValueError, match="start with the stock model"):
        run_batch(model, 1, [("K=1", {"llm_layers": [1], "llm_keep": [16]})])


def test_the_settings_of_the_random_model_are_the_published_ones():
    """`llava_settings` derives them from a config's image tokens and depth; at 576 tokens and 32 layers they are
    the table of benchmarks/llava_llm.md; a 4-layer model (`--quick`) has no second layer halfway down."""
    assert llava_settings(llava_shaped_config()) == [
        ("stock", None),
        ("LLM K=2 keep 144 (merge)", {"llm_layers": [2], "llm_keep": [144]}),
        ("LLM K=2 keep 144 (prune)", {"llm_layers": [2], "llm_keep": [144], "reduction": "prune"}),
        ("LLM K=2,16 keep 288,72 (merge)", {"llm_layers": [2, 16], "llm_keep": [288, 72]}),
        ("vision r=96 (288 tokens)", {"r": 96}),
        ("vision r=96 + LLM K=2 keep 72", {"r": 96, "llm_layers": [2], "llm_keep": [72]}),
    ]
    quick = [name for name, _ in llava_settings(llava_shaped_config(text_layers=4))]
    assert quick == ["stock", "LLM K=2 keep 144 (merge)", "LLM K=2 keep 144 (prune)", "vision r=96 (288 tokens)",
                     "vision r=96 + LLM K=2 keep 72"]
