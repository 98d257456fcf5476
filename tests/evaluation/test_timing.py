import pytest

from turbo_hf.evaluation.timing import interleaved_medians


def test_runs_are_interleaved_with_warmup():
    calls = []
    interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3


def test_bad_repeats_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians({"a": lambda: None}, repeats=0)


def test_interleaved_times_rotate_the_start_and_keep_every_sample():
    from turbo_hf.evaluation.timing import interleaved_times

    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleaved_times(runs, repeats=3, warmup=1, rotate=True)
    assert calls == list("abc") + list("bca") + list("cab") + list("abc")
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_prepare_runs_before_the_clock_and_the_device_is_synchronised_around_each_call(monkeypatch):
    import time

    from turbo_hf.evaluation import timing

    events = []
    monkeypatch.setattr(timing, "synchronize", lambda device=None: events.append(("sync", device)))
    samples = timing.interleaved_times(
        {"fast": lambda: events.append("fast"), "slow": lambda: events.append("slow")},
        repeats=1, warmup=0, device="cuda:0",
        prepare={"slow": lambda: (events.append("prepare slow"), time.sleep(0.05))},
        on_call=lambda name, seconds: events.append(("done", name)),
    )
    assert events == [("sync", "cuda:0"), "fast", ("sync", "cuda:0"), ("done", "fast"),
                      "prepare slow", ("sync", "cuda:0"), "slow", ("sync", "cuda:0"), ("done", "slow")]
    assert samples["slow"][0] < 0.05  # the sleep in `prepare` is not timed


def test_prepare_for_an_unknown_callable_is_refused():
    from turbo_hf.evaluation.timing import interleaved_times

    with pytest.raises(ValueError, match=r"`prepare` names callables that are not in `runs`: \['b'\]"):
        interleaved_times({"a": lambda: None}, prepare={"b": lambda: None})


def test_measure_settings_applies_each_setting_before_its_timed_call():
    """The one timing loop under `turbo-hf bench`, the eval scripts and benchmark_speed.py: every timed call
    runs under its own setting, in rotating order, and the model ends unpatched."""
    import torch

    from turbo_hf import is_turbo_applied
    from turbo_hf.evaluation.measurement import measure_settings
    from turbo_hf.evaluation.settings import build_settings
    from turbo_hf.testing.tiny_models import build, inputs

    model = build("vit")
    pixels = inputs("vit")["pixel_values"]
    seen = []
    settings = build_settings(["tome", "turbo"], [2])

    def call():
        patch = getattr(model, "_turbo_patch", None)
        seen.append(patch.config.mode if patch is not None and is_turbo_applied(model) else "stock")
        return model(pixel_values=pixels)

    speed = measure_settings(model, settings, call, 2, torch.device("cpu"), warmup=1, repeats=2, flops=False,
                             memory=False, progress=False)
    assert seen[:9] == ["stock", "tome", "turbo", "tome", "turbo", "stock", "turbo", "stock", "tome"]
    assert {name: len(entry["latencies_ms"]) for name, entry in speed.items()} == {
        "stock": 2, "tome r=2": 2, "turbo r=2": 2}
    assert speed["stock"]["speedup"] == 1.0 and not is_turbo_applied(model)


# ------------------------------------------------ spread, threads, machine load and the warnings they give


def test_summary_gives_quartiles_that_one_slow_round_does_not_move():
    from turbo_hf.evaluation.timing import timing_summary

    summary = timing_summary([1.0, 1.02, 0.98, 1.01, 5.0])  # one round hit by another job
    assert (summary["min"], summary["median"], summary["max"]) == (0.98, 1.01, 5.0)
    assert summary["spread"] > 3 and summary["iqr_spread"] == pytest.approx((1.02 - 1.0) / 1.01)
    assert timing_summary([2.0])["iqr_spread"] == 0.0
    with pytest.raises(ValueError, match="at least one timing"):
        timing_summary([])


def test_fixed_threads_sets_and_restores_the_count():
    import torch

    from turbo_hf.evaluation.timing import fixed_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), fixed_threads(1) as threads:
        assert threads == torch.get_num_threads() == 1
        raise RuntimeError("the count comes back after an error too")
    assert torch.get_num_threads() == before
    with fixed_threads(None) as threads:
        assert threads == before
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match=r"`threads` \(--threads\) must be a positive integer"):
            with fixed_threads(bad):
                pass


def test_a_timing_starved_of_cpu_is_flagged():
    """A call that waits (here: sleeps) instead of computing gets no CPU time, as a call whose cores another job
    took does: the CPU share shows it, and the warning names it."""
    import time

    from turbo_hf.evaluation.timing import timed_rounds, timing_warnings

    result = timed_rounds({"stock": lambda: time.sleep(0.01), "turbo": lambda: time.sleep(0.005)}, repeats=3, threads=1)
    assert result["machine"]["threads"] == 1 and result["machine"]["cpu_share"] < 0.5
    assert {name: len(values) for name, values in result["samples"].items()} == {"stock": 3, "turbo": 3}
    assert result["summary"]["stock"]["median"] >= 0.01
    warnings = timing_warnings(result["summary"], result["machine"])
    assert any("of the CPU time their 1 thread(s) asked for" in warning for warning in warnings)


def test_warnings_for_noise_load_and_efficiency_above_the_limit():
    from turbo_hf.evaluation.timing import SPREAD_LIMIT, timing_warnings

    quiet = {"threads": 1, "cpus": 2, "load_average": 0.2, "cpu_share": 0.98}
    steady = {"stock": {"iqr_spread": 0.02}, "turbo r=16": {"iqr_spread": 0.03}}
    assert timing_warnings(steady, quiet, {"turbo r=16": (1.60, 1.66)}) == []
    noisy = timing_warnings({**steady, "turbo r=16": {"iqr_spread": 3 * SPREAD_LIMIT}}, quiet)
    assert len(noisy) == 1 and "turbo r=16 30%" in noisy[0] and "stock" not in noisy[0]
    busy = timing_warnings(steady, {**quiet, "load_average": 1.8, "cpu_share": None})  # no share (accelerator)
    assert len(busy) == 1 and "load average 1.8 on 2 CPUs" in busy[0]
    # the load average lags (the last minute's work counts): the CPU share measured meanwhile decides on CPU
    assert timing_warnings(steady, {**quiet, "load_average": 1.8}) == []
    assert timing_warnings(steady, {**quiet, "load_average": 1.8, "threads": 2, "cpu_share": 0.6})[0].startswith(
        "the timed calls got 60% of the CPU time their 2 thread(s)")
    above = timing_warnings(steady, quiet, {"turbo r=16": (2.0, 1.66)})
    assert len(above) == 1 and "exceeds its FLOP limit 1.66x (efficiency 120%)" in above[0]


def test_benchmark_speed_script_prints_threads_quartiles_and_warnings(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    import torch
    from transformers import Dinov2Config, Dinov2Model

    from turbo_hf.evaluation.timing import DEFAULT_THREADS

    folder = tmp_path / "dinov2"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(folder)
    path = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_speed.py"
    spec = importlib.util.spec_from_file_location("benchmark_speed", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before = torch.get_num_threads()
    script.main(["--model", str(folder), "--image-size", "56", "--batch-size", "2", "--r", "2", "--modes", "tome",
                 "--repeats", "3", "--out", str(tmp_path / "out")])
    assert torch.get_num_threads() == before  # the timing's thread count does not leak out
    printed = capsys.readouterr().out
    assert f"torch threads: {DEFAULT_THREADS}" in printed and "interquartile ms" in printed
    saved = json.loads((tmp_path / "out" / "speed_dinov2.json").read_text())
    assert saved["metadata"]["timing_machine"]["threads"] == DEFAULT_THREADS
    assert isinstance(saved["metadata"]["warnings"], list)
    assert [row["name"] for row in saved["rows"]] == ["stock", "tome r=2"]
    row = saved["rows"][1]
    assert row["min_latency_ms"] <= row["q1_latency_ms"] <= row["median_latency_ms"] <= row["q3_latency_ms"]
