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
