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
