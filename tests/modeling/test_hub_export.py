"""Turbo classes load stock checkpoints, save self-contained Hub folders and load back, with and without
the package (remote code in a subprocess where `turbo_hf` cannot be imported)."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

import turbo_hf
from turbo_hf.testing.tiny_models import build, inputs
from turbo_hf import TurboConfig
from turbo_hf.modeling.hub_export import remote_code_files

# tiny family name -> (public Turbo class, the Auto class that loads it)
CASES = {
    "vit-cls": (turbo_hf.TurboViTForImageClassification, "AutoModelForImageClassification"),
    "dinov2": (turbo_hf.TurboDinov2Model, "AutoModel"),
    "dinov2-cls": (turbo_hf.TurboDinov2ForImageClassification, "AutoModelForImageClassification"),
    "clip": (turbo_hf.TurboCLIPModel, "AutoModel"),
    "clip-vision": (turbo_hf.TurboCLIPVisionModel, "AutoModel"),
    "siglip": (turbo_hf.TurboSiglipModel, "AutoModel"),
    "siglip-vision": (turbo_hf.TurboSiglipVisionModel, "AutoModel"),
}


def image_output(model, pixel_values):
    if hasattr(model, "get_image_features"):
        return model.get_image_features(pixel_values=pixel_values).pooler_output
    out = model(pixel_values=pixel_values)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def run_remote(folder, auto_class, tensors_path):
    """Load the folder with trust_remote_code in a fresh interpreter where turbo_hf is not importable."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None  # any `import turbo_hf` now fails
        import torch, transformers
        pixel_values, expected = torch.load({str(tensors_path)!r})
        model = getattr(transformers, {auto_class!r}).from_pretrained({str(folder)!r}, trust_remote_code=True)
        with torch.no_grad():
            if hasattr(model, "get_image_features"):
                got = model.get_image_features(pixel_values=pixel_values).pooler_output
            else:
                out = model(pixel_values=pixel_values)
                got = out.logits if hasattr(out, "logits") else out.last_hidden_state
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        print("REMOTE", type(model).__name__, torch.equal(got, expected))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_stock_checkpoint_to_turbo_folder_and_back(name, tmp_path):
    turbo_class, auto_class = CASES[name]
    stock = build(name)
    stock.save_pretrained(tmp_path / "stock")
    pixel_values = inputs(name)["pixel_values"]
    with torch.no_grad():
        reference = image_output(stock, pixel_values)

    # a stock checkpoint loads into the Turbo class without missing or unexpected keys; r=0 is the stock model
    same, info = turbo_class.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.equal(image_output(same.eval(), pixel_values), reference)

    model = turbo_class.from_pretrained(tmp_path / "stock", turbo_config=TurboConfig(r=6)).eval()
    with torch.no_grad():
        merged = image_output(model, pixel_values)
    assert not torch.equal(merged, reference)

    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"].startswith("turbo_") and config["turbo_config"]["r"] == 6
    assert config["auto_map"]["AutoConfig"].endswith("Config")
    assert config["auto_map"][auto_class] == f"{type(model).__module__.split('.')[-1]}.{turbo_class.__name__}"
    assert {p.name for p in remote_code_files(sys.modules[turbo_class.__module__].__file__)} <= {
        p.name for p in folder.iterdir()
    }
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "| `r` | `6` |" in card

    # with the package: the Auto class gives the Turbo class and the same outputs
    loaded = getattr(transformers, auto_class).from_pretrained(folder).eval()
    assert type(loaded) is turbo_class
    with torch.no_grad():
        assert torch.equal(image_output(loaded, pixel_values), merged)

    # without the package: remote code gives the same outputs
    torch.save((pixel_values, merged), tmp_path / "tensors.pt")
    result = run_remote(folder, auto_class, tmp_path / "tensors.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"REMOTE {turbo_class.__name__} True" in result.stdout


def test_turbo_folder_without_remote_code_or_package_is_refused(tmp_path):
    build("dinov2").save_pretrained(tmp_path / "stock")
    turbo_hf.TurboDinov2Model.from_pretrained(tmp_path / "stock", turbo_config={"r": 3}).save_pretrained(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=False)
        except ValueError as error:
            print("REFUSED", "trust_remote_code" in str(error))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "REFUSED True" in result.stdout, result.stderr[-3000:]


def test_patched_stock_model_saves_a_stock_checkpoint_with_a_warning(tmp_path, caplog):
    model = turbo_hf.apply_turbo(build("vit-cls"), r=4)
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path)
    assert "does not keep the Turbo settings" in caplog.text
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vit"


# ------------------------------------------------------------------ the remote code does nothing at import

# Module-level calls the remote code may make: registration with Transformers and the adapter registry.
REGISTER_CALLS = {
    "register_adapter", "register_grid_family", "_register_text_tower", "AutoConfig.register", "AutoModel.register",
    "AutoProcessor.register", "AttentionInterface.register", "AttentionMaskInterface.register",
}
# Calls that may build a module-level value or decorate a definition: pure constructors and decorators.
PURE_CALLS = {
    "FamilyAdapter", "ReducibleEncoder", "re.compile", "inspect.signature", "logging.get_logger", "staticmethod", "classmethod",
    "dataclass", "field", "torch.no_grad", "capture_outputs", "merge_with_config_defaults", "can_return_tuple",
    "contextmanager", "property", "stock_field_order", "functools.cache", "refuse_llm_settings",
}
# Names whose mere use at import would touch the process or the machine (environment, files, output, logging).
FORBIDDEN_NAMES = {"os", "sys", "open", "environ", "getenv", "print", "exec", "eval", "__import__", "subprocess",
                   "basicConfig", "set_verbosity", "setLevel", "warnings", "input", "Path", "pathlib", "shutil"}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return type(node).__name__


def _evaluated_nodes(expression):
    """The nodes of an expression that run when it is evaluated: not the bodies of lambdas (run when called)."""
    pending = [expression]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.Lambda):
            pending += [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]
        else:
            pending += list(ast.iter_child_nodes(node))


def _impure_parts(expression, calls=PURE_CALLS) -> list[str]:
    """What in an expression evaluated at import is not a constant, name, literal, lambda or allowed call."""
    problems = []
    for node in _evaluated_nodes(expression):
        if isinstance(node, ast.Call) and _dotted(node.func) not in calls:
            problems.append(f"call {_dotted(node.func)}()")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            problems.append(f"name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            problems.append(f"attribute .{node.attr}")
        elif isinstance(node, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            problems.append(type(node).__name__)
    return problems


def _definition_problems(node) -> list[str]:
    """A def or class runs its decorators, defaults and bases at import; a class body runs its statements."""
    problems = []
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _dotted(target) not in PURE_CALLS and not _dotted(target).endswith(".setter"):
            problems.append(f"decorator @{_dotted(target)}")
        if isinstance(decorator, ast.Call):
            problems += _impure_parts(decorator)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
            problems += _impure_parts(default)
        return problems
    for base in [*node.bases, *(keyword.value for keyword in node.keywords)]:
        problems += _impure_parts(base)
    for statement in node.body:
        problems += [f"{node.name}: {p}" for p in _statement_problems(statement, in_class=True)]
    return problems


def _statement_problems(statement, in_class: bool = False) -> list[str]:
    """Why a statement run at import is more than a definition, an import, a constant or a registration."""
    if isinstance(statement, (ast.Import, ast.ImportFrom, ast.Pass)):
        return [] if not in_class or isinstance(statement, ast.Pass) else ["import in a class body"]
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return _definition_problems(statement)
    if isinstance(statement, ast.Expr):
        if isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str):
            return []  # a docstring
        if not in_class and isinstance(statement.value, ast.Call) and _dotted(statement.value.func) in REGISTER_CALLS:
            return _impure_parts(statement.value, PURE_CALLS | REGISTER_CALLS)
        return [f"expression {ast.unparse(statement)[:80]}"]
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        problems = [p for target in targets for p in _impure_parts(target)]
        return problems + (_impure_parts(statement.value) if statement.value is not None else [])
    return [f"{type(statement).__name__} statement at line {statement.lineno}"]


def import_time_problems(source: str) -> list[str]:
    """Every module-level statement of `source` that does more than define, import or register."""
    return [f"line {s.lineno}: {p}" for s in ast.parse(source).body for p in _statement_problems(s)]


def test_the_import_time_check_catches_side_effects():
    clean = ('import re\n"""doc"""\nX = {"a": 1}\nPAT = re.compile("x")\n'
             'register_adapter(FamilyAdapter(name="x", layers=lambda model: list(model.layers)))\n')
    assert import_time_problems(clean) == []
    for dirty in ('import os\nHOME = os.environ["HOME"]\n', "import logging\nlogging.basicConfig()\n",
                  'DATA = open("f").read()\n', "print('hi')\n", "for i in range(3):\n    pass\n",
                  "import torch\ntorch.manual_seed(0)\n", "class A:\n    x = load()\n",
                  "def f(x=setup()):\n    pass\n", "@register_everything\nclass B:\n    pass\n",
                  "F = (lambda x=os.getcwd(): x)\n"):
        assert import_time_problems(dirty), dirty


def _remote_code_sources() -> dict[str, Path]:
    """Every file any Turbo class or processor copies into a Hub folder."""
    files = {}
    for name in dir(turbo_hf.modeling):
        obj = getattr(turbo_hf.modeling, name)
        if isinstance(obj, type) and (getattr(obj, "turbo_auto_classes", None) or getattr(obj, "_auto_class", None)):
            if obj.__module__.startswith("turbo_hf."):
                files.update({p.name: p for p in remote_code_files(sys.modules[obj.__module__].__file__)})
    return files


def test_remote_code_does_nothing_at_import_beyond_definitions_and_registration(tmp_path):
    sources = _remote_code_sources()
    assert {"modeling_turbo_vit.py", "modeling_turbo_llava.py", "processing_turbo_llava.py", "configuration_turbo.py"} <= set(sources)
    # the files an exported folder really holds are among them
    build("vit-cls").save_pretrained(tmp_path / "stock")
    model = turbo_hf.TurboViTForImageClassification.from_pretrained(tmp_path / "stock", turbo_config={"r": 2})
    model.save_pretrained(tmp_path / "turbo")
    copied = sorted(p.name for p in (tmp_path / "turbo").glob("*.py"))
    assert copied and set(copied) <= set(sources)
    problems = {name: import_time_problems(path.read_text()) for name, path in sorted(sources.items())}
    problems.update({f"exported {name}": import_time_problems((tmp_path / "turbo" / name).read_text()) for name in copied})
    assert not any(problems.values()), {name: found for name, found in problems.items() if found}


def test_folders_exported_before_the_modeling_layout_keep_loading(tmp_path):
    """A tiny TurboViTModel folder saved by turbo-hf 0.1.0 before `turbo_hf/modeling/` existed (flat
    `adapter_vit.py` remote code): it loads with the package and with its own remote code, and gives the
    output recorded when it was saved (to float rounding: the recording machine's CPU kernels may round
    differently), and its own remote code gives exactly the package's output on this machine."""
    import tarfile

    with tarfile.open(Path(__file__).with_name("data") / "legacy_vit_folder.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "legacy_vit"
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == "adapter_vit.TurboViTModel"
    saved = torch.load(folder / "expected.pt")
    model = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(model) is turbo_hf.TurboViTModel
    with torch.no_grad():
        output = model(pixel_values=saved["pixel_values"]).last_hidden_state
    torch.testing.assert_close(output, saved["last_hidden_state"])
    torch.save((saved["pixel_values"], output), tmp_path / "tensors.pt")
    remote = run_remote(folder, "AutoModel", tmp_path / "tensors.pt")
    assert remote.returncode == 0, remote.stderr
    assert "REMOTE TurboViTModel True" in remote.stdout


def test_model_card_holds_the_hub_metadata_loading_code_settings_and_results(tmp_path):
    from huggingface_hub import ModelCard

    build("vit-cls").save_pretrained(tmp_path / "stock")
    model = turbo_hf.TurboViTForImageClassification.from_pretrained(tmp_path / "stock", turbo_config={"r": 3})
    card_options = {"base_model": "google/vit-base-patch16-224", "license": "apache-2.0",
                    "results_markdown": "| setting | top-1 |\n|---|---|\n| turbo r=3 | 80.1 |",
                    "sources": {"r": "measured on ImageNet-1k val"}}
    model.save_pretrained(tmp_path / "turbo", model_card=card_options)
    card = ModelCard.load(tmp_path / "turbo" / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert set(card.data.tags) == {"turbo", "token-merging", "turbo-hf", "turbo_vit"}
    assert 'TurboViTForImageClassification.from_pretrained("PATH_OR_REPO")' in card.text
    assert 'AutoModelForImageClassification.from_pretrained("PATH_OR_REPO", trust_remote_code=True)' in card.text
    assert "| `r` | `3` |" in card.text and "| turbo r=3 | 80.1 |" in card.text
    assert "- `r`: measured on ImageNet-1k val" in card.text
    # a local folder is no Hub id: the card names it but keeps it out of the metadata
    model.save_pretrained(tmp_path / "local", model_card={"base_model": str(tmp_path / "stock")})
    local = ModelCard.load(tmp_path / "local" / "README.md")
    assert local.data.base_model is None and local.data.license == "other"
    assert f"Base model: `{tmp_path / 'stock'}`." in local.text


@pytest.mark.parametrize("bad_import", ["from ..outside import x", "from .pkg.inner import x", "from .missing import x"])
def test_remote_code_files_refuse_imports_that_are_not_flat_siblings(tmp_path, bad_import):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "inner.py").write_text("x = 1\n")
    (tmp_path / "outside.py").write_text("x = 1\n")
    (tmp_path / "modeling_a.py").write_text("from .helper import y\n")
    (tmp_path / "helper.py").write_text(f"{bad_import}\ny = 2\n")
    with pytest.raises(FileNotFoundError, match="modeling_a.py .*imports .*, which is not a flat sibling module"):
        remote_code_files(tmp_path / "modeling_a.py")
    (tmp_path / "helper.py").write_text("y = 2\n")
    assert [p.name for p in remote_code_files(tmp_path / "modeling_a.py")] == ["helper.py", "modeling_a.py"]


def test_the_package_imports_with_only_its_install_requires():
    """`import turbo_hf` and every `turbo_hf.modeling` module work (and a patched model runs) when the
    optional packages (the `eval`, `fetch`, `examples` and `diffusion` extras) are not installed; the family of an
    optional package (`registry.OPTIONAL_FAMILIES`) says which extra it needs."""
    optional = ["accelerate", "datasets", "evaluate", "sklearn", "matplotlib", "pycocoevalcap", "PIL", "onnx",
                "onnxruntime", "skimage", "diffusers"]
    script = textwrap.dedent(
        f"""
        import sys
        for name in {optional!r}:
            sys.modules[name] = None  # `import name` fails and transformers sees the package as absent
        import importlib, pkgutil
        import turbo_hf, turbo_hf.modeling
        from turbo_hf.modeling.registry import OPTIONAL_FAMILIES
        optional_families = {{"turbo_hf.modeling." + name for name in OPTIONAL_FAMILIES.values()}}
        for info in pkgutil.walk_packages(turbo_hf.modeling.__path__, prefix="turbo_hf.modeling."):
            if info.name in optional_families:
                try:
                    importlib.import_module(info.name)
                except ImportError as error:
                    assert "pip install turbo-hf[diffusion]" in str(error), error
                else:
                    raise AssertionError(info.name + " imported without its optional package")
            else:
                importlib.import_module(info.name)
        from turbo_hf.testing.tiny_models import build, inputs
        model = turbo_hf.apply_turbo(build("vit-cls"), r=2)
        print("OK", tuple(model(**inputs("vit-cls")).logits.shape))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK (2, 2)" in result.stdout
