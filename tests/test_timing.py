import pytest

from turbo_hf.timing import interleaved_medians


def test_runs_are_interleaved_with_warmup():
    calls = []
    interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3


def test_bad_repeats_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians({"a": lambda: None}, repeats=0)
