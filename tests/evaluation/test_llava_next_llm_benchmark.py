"""The LLaVA-NeXT in-LLM benchmark library: two anyres images of different sizes in one left-padded batch, each
with its own token count, and the reduced caches that `measure_settings` reports for them."""

import pytest

from turbo_hf.evaluation.llava_next_llm_benchmark import SIZES, build_llava_next, run_llava_next
from turbo_hf.modeling.llm_token_reduction import keep_count

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_batch_of_two_layouts_reports_the_caches_of_each_share():
    settings = [("stock", None), ("keep 0.25", {"llm_layers": [1], "llm_keep": [0.25]})]
    [block] = run_llava_next(build_llava_next(layers=2), settings, [SIZES], repeats=1, warmup=0, new_tokens=1)
    stock, reduced = block["settings"]["stock"], block["settings"]["keep 0.25"]
    assert block["batch"] == 2 and stock["image_tokens_to_llm"] == "784 / 1312"
    length = stock["prompt_length"]
    removed = min(count - keep_count(0.25, count) for count in (784, 1312))  # the row removing least sets the length
    assert stock["cache_tokens_per_layer"] == [length, length]
    assert reduced["cache_tokens_per_layer"] == [length, length - removed]
    assert reduced["kv_cache_ratio"] < 1 and reduced["reduced_layers"] == [1]
