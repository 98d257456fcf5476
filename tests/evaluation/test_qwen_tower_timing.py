"""The measured vision tower / prefill split of the Qwen2-VL benchmark on a tiny random Qwen2-VL: its FLOP model counts
what the model computes, and every reported number comes from the timed samples (no timing thresholds)."""

import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from turbo_hf.evaluation.qwen_llm_benchmark import (
    QWEN2_VL_7B_TEXT, prefill_macs, qwen_prompts, tower_markdown, tower_split, tower_versus_llm,
)
from turbo_hf.testing.tiny_models import qwen2_vl_config

pytestmark = pytest.mark.usefixtures("one_thread")
KEEPS = [0.5, 0.25]


def tiny(attn: str = "sdpa"):
    config = qwen2_vl_config()  # patch 2 px, 2 vision blocks, 4 decoder layers: a 16 px image has 64 patches
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).eval()


def macs_counted(call) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("resolution", [8, 16])
def test_prefill_macs_counts_what_the_model_computes(resolution, batch):
    model = tiny("eager")  # eager attention: torch's FLOP counter sees the attention matmuls too
    inputs = qwen_prompts(model.config, batch, resolution)
    cost = prefill_macs(model.config, inputs, layer=2, keeps=KEEPS)
    tower = macs_counted(lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]))
    prefill = macs_counted(lambda: model(**inputs, use_cache=True, logits_to_keep=1))
    assert cost["tower_gmacs"] * 1e9 == pytest.approx(tower, rel=1e-9)
    assert (cost["tower_gmacs"] + cost["llm_gmacs"]) * 1e9 == pytest.approx(prefill, rel=1e-9)
    assert cost["tower_share"] == pytest.approx(tower / prefill)
    for shares in (cost["tower_removable"], cost["llm_saved"]):  # keeping less removes more, never all
        assert 0 < shares[0.5] < shares[0.25] < 1


def test_prefill_macs_saves_nothing_when_nothing_is_removed():
    config = tiny().config
    inputs = qwen_prompts(config, 2, 16)
    assert prefill_macs(config, inputs, layer=2, keeps=[1.0])["llm_saved"][1.0] == 0
    assert prefill_macs(config, inputs, layer=2, keeps=[1.0])["tower_removable"][1.0] == 0
    assert prefill_macs(config, inputs, layer=config.text_config.num_hidden_layers, keeps=[0.25])["llm_saved"][0.25] == 0


def test_tower_split_reports_the_measured_samples():
    model = tiny()
    rows = tower_split(model, [8, 16], [1, 2], repeats=2, warmup=1, layer=2, keeps=KEEPS, threads=1)
    assert [(row["resolution"], row["batch"]) for row in rows] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    reference = Qwen2VLConfig(text_config=QWEN2_VL_7B_TEXT)
    for row in rows:
        samples = row["samples"]
        assert {len(samples[name][clock]) for name in ("tower", "prefill") for clock in ("cpu", "wall")} == {2}
        # the prefill runs the tower and then the language model: more CPU time in every round
        assert all(0 < t < p for t, p in zip(samples["tower"]["cpu"], samples["prefill"]["cpu"]))
        for clock in ("cpu", "wall"):
            assert row["tower_ms"][clock] == pytest.approx(statistics.median(samples["tower"][clock]) * 1000)
            assert row["prefill_ms"][clock] == pytest.approx(statistics.median(samples["prefill"][clock]) * 1000)
            ratios = [t / p for t, p in zip(samples["tower"][clock], samples["prefill"][clock])]
            assert row["share"][clock]["median"] == pytest.approx(statistics.median(ratios))
        assert 0 < row["share"]["cpu"]["median"] < 1
        inputs = qwen_prompts(model.config, row["batch"], row["resolution"])
        assert row["patches_per_image"] == (row["resolution"] // 2) ** 2
        assert row["flops"]["model"] == prefill_macs(model.config, inputs, 2, KEEPS)
        assert row["flops"]["reference"] == prefill_macs(reference, inputs, 2, KEEPS)
        removable = row["flops"]["model"]["tower_removable"]
        assert row["tower_merge_bound"] == pytest.approx({k: row["share"]["cpu"]["median"] * removable[k]
                                                          for k in KEEPS})
        assert row["machine"]["threads"] == 1 and isinstance(row["warnings"], list)


def test_tower_versus_llm_pairs_each_setting_with_the_bound_at_its_keep():
    rows = tower_split(tiny(), [8], [1], repeats=1, warmup=0, layer=2, keeps=KEEPS, threads=1)
    settings = {"stock": {"turbo_config": None, "prefill_speedup_cpu": 1.0},
                "keep 0.5": {"turbo_config": {"llm_layers": [2], "llm_keep": [0.5]}, "prefill_speedup_cpu": 1.25},
                "keep 0.25": {"turbo_config": {"llm_layers": [2], "llm_keep": [0.25]}, "prefill_speedup_cpu": 2.0}}
    versus = tower_versus_llm(rows, [{"resolution": 8, "batch": 1, "settings": settings}])
    assert [v["setting"] for v in versus] == ["keep 0.5", "keep 0.25"]  # the stock row is the reference
    row, reference = rows[0], rows[0]["flops"]["reference"]
    for v, saved in zip(versus, [0.2, 0.5]):
        assert v["in_llm_saved_cpu"] == pytest.approx(saved)
        assert v["tower_merge_bound"] == row["tower_merge_bound"][v["keep"]]
        assert v["in_llm_saved_flops"] == row["flops"]["model"]["llm_saved"][v["keep"]]
        assert v["reference_tower_merge_bound"] == pytest.approx(
            reference["tower_share"] * reference["tower_removable"][v["keep"]])
    table = tower_markdown(rows, versus)
    assert f"**{row['share']['cpu']['median']:.1%}**" in table and "**50.0%**" in table and "**20.0%**" in table
    assert "Warning" not in tower_markdown([{**row, "warnings": []}], versus)
    assert "**Warning** (tower timing): busy" in tower_markdown([{**row, "warnings": ["busy"]}], versus)
