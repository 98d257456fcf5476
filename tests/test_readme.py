"""The README as a user reads it: every Python snippet runs, every public name is documented, and the first
command installs what its outputs need.

The snippets load `facebook/dinov2-small` and `stable-diffusion-v1-5/stable-diffusion-v1-5` from the Hub; the tests
have no Hub access, so they run with those ids replaced by tiny local folders (a stock DINOv2 checkpoint with its
image processor, a tiny random Stable Diffusion pipeline, built here): the only change made to the code as written.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import torch

import turbo_hf

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HUB_ID = "facebook/dinov2-small"
SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

pytestmark = pytest.mark.usefixtures("one_thread")


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def test_every_python_snippet_runs_in_order(tmp_path, monkeypatch):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    stock = tmp_path / "dinov2-small"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=518, patch_size=14)).save_pretrained(stock)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}).save_pretrained(stock)
    from turbo_hf.testing.tiny_diffusion import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "sd")
    monkeypatch.chdir(tmp_path)
    snippets = python_snippets()
    assert len(snippets) >= 3 and all(HUB_ID in snippets[i] for i in (0, 1))
    namespace: dict = {}
    for index, snippet in enumerate(snippets):
        snippet = snippet.replace(HUB_ID, str(stock)).replace(SD_ID, str(tmp_path / "sd"))
        code = compile(snippet, f"README.md python snippet {index + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own code
    assert namespace["features"].shape == (2, 32)
    assert (tmp_path / "dinov2-small-turbo" / "preprocessor_config.json").exists()
    assert namespace["turbo_hf"].get_turbo_config(namespace["model"]).r == 8  # the changed settings, applied


def test_every_public_name_is_documented():
    missing = [name for name in turbo_hf.__all__ if f"`{name}" not in README]
    assert not missing, f"turbo_hf.__all__ names the README does not document: {missing}"


def _extra(config: configparser.ConfigParser, name: str) -> set[str]:
    """The requirements of an extra, its `turbo-hf[...]` references followed."""
    found = set()
    for line in filter(None, (line.strip() for line in config["options.extras_require"][name].splitlines())):
        nested = re.fullmatch(r"turbo-hf\[(.+)\]", line)
        if nested:
            for inner in nested.group(1).split(","):
                found |= _extra(config, inner.strip())
        else:
            found.add(re.split(r"[<>=!~ \[]", line, maxsplit=1)[0].lower())
    return found


def test_the_first_command_installs_what_its_outputs_need():
    first = re.search(r"```bash\n(.*?)\n```", README, flags=re.DOTALL).group(1)
    assert 'pip install -e ".[examples]"' in first and first.rstrip().endswith("turbo-hf demo")
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    examples = _extra(config, "examples")
    # the ONNX conversion of the real weights, the photos, progress bars, plots (bench, evaluation scripts)
    assert {"onnx", "onnxruntime", "scikit-image", "tqdm", "matplotlib", "pillow"} <= examples
