"""The list of Transformers internals we depend on, and the check that names our code when upstream moves."""

import inspect

import pytest
import transformers
from transformers.models.llama import modeling_llama
from transformers.models.vit.modeling_vit import ViTLayer

import turbo_hf.testing.upstream as upstream
from turbo_hf.testing.upstream import OUTPUT_FIELDS, OVERRIDES, OutputFields, check_upstream, discover_overrides, resolve


def test_the_installed_release_is_a_reviewed_one():
    assert check_upstream() == []


def test_every_overridden_stock_method_is_listed():
    listed = {(entry.ours, entry.upstream) for entry in OVERRIDES}
    assert discover_overrides() - listed == set()
    assert len(listed) == len(OVERRIDES)


@pytest.mark.parametrize("entry", OVERRIDES, ids=lambda entry: f"{entry.ours.removeprefix('turbo_hf.')}<-{entry.upstream.rsplit('.', 2)[-2]}")
def test_every_copy_names_its_upstream_source(entry):
    holder = resolve(entry.ours.rsplit(".", 1)[0])
    source = inspect.getsource(holder if inspect.isclass(holder) else resolve(entry.ours))
    assert f"Copied from {entry.upstream} (v5." in source or f"Overrides {entry.upstream} (v5." in source


def test_a_changed_upstream_method_names_our_copy(monkeypatch):
    def forward(self, hidden_states, *args, **kwargs):  # what a new release might ship
        return self.output(self.intermediate(self.attention(hidden_states)[0]), hidden_states)

    monkeypatch.setattr(ViTLayer, "forward", forward)
    problems = check_upstream()
    assert len(problems) == 2  # the ViT layer and the kit's pre-norm layer forward that it runs
    assert all("transformers.models.vit.modeling_vit.ViTLayer.forward changed" in problem for problem in problems)
    assert "re-check turbo_hf.modeling.modeling_turbo_vit.TurboViTLayer.forward" in problems[0] + problems[1]
    assert "re-check turbo_hf.modeling.turbo_layers.TurboPreNormLayerMixin.forward" in problems[0] + problems[1]
    assert transformers.__version__ in problems[0]


def test_a_removed_private_helper_names_its_user(monkeypatch):
    monkeypatch.delattr(modeling_llama, "repeat_kv")
    problems = check_upstream()
    assert problems == [
        f"transformers.models.llama.modeling_llama.repeat_kv is gone in transformers {transformers.__version__}: "
        "re-check turbo_hf.modeling.llm_token_scores.decoder_layer_scores."
    ]


def test_a_missing_output_field_names_its_user(monkeypatch):
    entry = OutputFields("transformers.modeling_outputs.BaseModelOutputWithPast", ("image_hidden_states",), "our code")
    monkeypatch.setattr(upstream, "OUTPUT_FIELDS", (*OUTPUT_FIELDS, entry))
    problems = check_upstream()
    assert len(problems) == 1 and "['image_hidden_states']" in problems[0] and "re-check our code" in problems[0]


def test_an_unreviewed_release_is_reported_for_every_entry():
    problems = check_upstream(recorded={})
    assert len(problems) == len(OVERRIDES) + len(upstream.INTERNALS)
    assert all("reviewed: none" in problem for problem in problems)


def test_recording_adds_the_installed_release(tmp_path):
    path = tmp_path / "fingerprints.json"
    recorded = upstream.record_fingerprints(path)
    assert all(set(versions) == {transformers.__version__} for versions in recorded.values())
    assert check_upstream(recorded=upstream.recorded_fingerprints(path)) == []
