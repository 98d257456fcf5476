"""The in-LLM reduction benchmark library on a tiny random Qwen2-VL: its decoding loop is `generate()`'s greedy
one, and what it reports is measured (shorter caches, smaller KV cache, the stock row as the reference)."""

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from turbo_hf import apply_turbo
from turbo_hf.evaluation.llm_reduction_benchmark import DecodeRunner, measure_settings
from turbo_hf.evaluation.qwen_llm_benchmark import qwen_prompts
from turbo_hf.testing.tiny_models import qwen2_vl_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(turbo=None):
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(qwen2_vl_config()).eval()  # patch 2 px: an 8 px image has 4 tokens
    return apply_turbo(model, **turbo) if turbo else model


@pytest.mark.parametrize("turbo", [None, {"llm_layers": [1], "llm_keep": [0.5]}])
def test_the_decoding_loop_is_greedy_generate(turbo):
    model = tiny(turbo)
    inputs = qwen_prompts(model.config, batch=2, resolution=8)
    runner = DecodeRunner(model, inputs, new_tokens=4, positions="mrope")
    runner.prefill()
    ids = runner.decode()
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(ids, expected[:, inputs["input_ids"].shape[1] + 1 :])  # the prefill gives the first token


def test_measure_settings_reports_the_reduced_caches():
    settings = [("stock", None), ("keep 0.25", {"llm_layers": [2], "llm_keep": [0.25]})]

    def build(turbo):
        model = tiny(turbo)
        return model, qwen_prompts(model.config, batch=1, resolution=16), {"turbo_config": turbo}

    result = measure_settings(settings, build, repeats=1, warmup=0, new_tokens=2, positions="mrope")
    stock, reduced = result["stock"], result["keep 0.25"]
    assert stock["prefill_speedup"] == 1.0 and stock["kv_cache_ratio"] == 1.0 and stock["reduced_layers"] is None
    length = stock["prompt_length"]  # 16 image tokens, 12 of them removed before layer 2
    assert stock["cache_tokens_per_layer"] == [length] * 4
    assert reduced["cache_tokens_per_layer"] == [length, length, length - 12, length - 12]
    assert reduced["kv_cache_ratio"] == pytest.approx((2 * length + 2 * (length - 12)) / (4 * length))
    assert reduced["reduced_layers"] == [2] and reduced["peak_tensor_mb"] > 0 and reduced["prefill_s"] > 0
