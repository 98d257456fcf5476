"""The public names: few, each shown in the README; every Turbo class and config importable from
`turbo_hf.modeling`."""

import inspect
from pathlib import Path

import turbo_hf
import turbo_hf.modeling

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_public_name_is_shown_in_the_readme():
    assert [name for name in turbo_hf.__all__ if f"`{name}`" not in README and f"{name}(" not in README] == []


def test_public_names_are_the_ones_exported_and_nothing_else_leaks():
    public = {name for name in vars(turbo_hf) if not name.startswith("_") and not inspect.ismodule(getattr(turbo_hf, name))}
    assert public == set(turbo_hf.__all__)


def test_every_turbo_class_of_the_modeling_folder_is_gathered_in_turbo_hf_modeling():
    defined = {
        name
        for module in vars(turbo_hf.modeling).values()
        if inspect.ismodule(module) and module.__name__.startswith("turbo_hf.modeling.modeling_turbo_")
        for name, value in vars(module).items()
        if inspect.isclass(value) and value.__module__ == module.__name__ and hasattr(value, "turbo_auto_classes")
    }
    assert defined and defined <= set(turbo_hf.modeling.__all__)
    assert all(getattr(turbo_hf, name) is getattr(turbo_hf.modeling, name) for name in turbo_hf.__all__ if name.startswith("Turbo"))
