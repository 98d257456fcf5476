"""Self-contained Hub folders: `save_pretrained` of a Turbo class writes weights, a `config.json` with an
`auto_map` for every Auto class that fits, the flat remote-code files, and a model card."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

from .configuration_turbo import active_settings, as_turbo_config

logger = logging.get_logger(__name__)


def remote_code_files(module_file: str | os.PathLike) -> list[Path]:
    """A module file and every flat sibling it imports with `from .x import y`, transitively.

    The crawl is Transformers' own (`get_relative_import_files`, what `trust_remote_code` loading follows);
    an import that is not a flat sibling (`from ..x`, `from .pkg.x`, a missing file) raises a
    `FileNotFoundError` naming it, since a Hub folder can only carry flat siblings.
    """
    start = Path(module_file)
    try:
        imported = [Path(path) for path in get_relative_import_files(start)]
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{start.name} (or a module it imports) imports {Path(error.filename).name}, which is not a flat sibling "
            "module."
        ) from error
    for path in imported:
        if path.parent != start.parent or not path.stem.isidentifier():
            raise FileNotFoundError(f"{start.name} (or a module it imports) imports {path.name}, which is not a flat "
                                    "sibling module.")
    return sorted({start, *imported})


def _looks_like_hub_id(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()


def model_card(
    model_class_name: str,
    config,
    *,
    auto_class: str = "AutoModel",
    base_model: str | None = None,
    license: str | None = None,
    results_markdown: str | None = None,
    sources: dict | None = None,
) -> str:
    """A model card (README.md): Hub metadata (`huggingface_hub.ModelCardData`), how to load the model with and
    without `turbo_hf`, its Turbo settings, where they come from, and measured results."""
    turbo = as_turbo_config(getattr(config, "turbo_config", None))
    base_model = base_model if base_model is not None else getattr(config, "_name_or_path", None)
    data = ModelCardData(
        library_name="transformers",
        base_model=base_model if _looks_like_hub_id(base_model) else None,
        license=license or "other",
        tags=["turbo", "token-merging", "turbo-hf", type(config).model_type],
    )
    settings = "\n".join(f"| `{name}` | `{value}` |" for name, value in turbo.settings().items())
    lines = [
        f"# {model_class_name} with Turbo token merging",
        "",
        "This folder holds a stock Hugging Face Transformers checkpoint whose encoder merges redundant tokens",
        "with Turbo (Ju et al., ECCV 2024): no retraining, the same weights, fewer tokens per layer.",
        f"Base model: `{base_model}`." if base_model else "",
        "",
        "## Load it",
        "",
        "```python",
        f"from turbo_hf.modeling import {model_class_name}  # pip install turbo-hf",
        f"model = {model_class_name}.from_pretrained(\"PATH_OR_REPO\")",
        "```",
        "",
        "Without `turbo_hf` installed, the folder carries its own code:",
        "",
        "```python",
        f"from transformers import {auto_class}",
        f"model = {auto_class}.from_pretrained(\"PATH_OR_REPO\", trust_remote_code=True)",
        "```",
        "",
        "Loading it with the stock class instead ignores the Turbo settings (Transformers warns about the",
        f"`{type(config).model_type}` model type).",
        "",
        "## Turbo settings",
        "",
        "| setting | value |",
        "|---|---|",
        settings,
        "",
    ]
    if sources:
        lines += ["Where the settings come from:", ""] + [f"- `{k}`: {v}" for k, v in sources.items()] + [""]
    if results_markdown:
        lines += ["## Measured speed and quality", "", results_markdown.strip(), ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_hub_folder(model, save_directory: str | os.PathLike, card: dict | None = None) -> None:
    """Complete a folder that `save_pretrained` wrote: `auto_map`, remote-code files and the model card."""
    folder = Path(save_directory)
    auto_classes = dict(getattr(type(model), "turbo_auto_classes", {}))
    config_class = type(model.config)
    module_file = Path(sys.modules[type(model).__module__].__file__)
    module = module_file.stem
    auto_map = {"AutoConfig": f"{module}.{config_class.__name__}"}
    auto_map.update({auto: f"{module}.{cls.__name__}" for auto, cls in auto_classes.items()})
    config_path = folder / "config.json"
    config_dict = json.loads(config_path.read_text())
    config_dict["auto_map"] = auto_map
    config_path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    for path in remote_code_files(module_file):
        shutil.copyfile(path, folder / path.name)
    model.config.auto_map = auto_map
    main_auto_class = next((auto for auto, cls in auto_classes.items() if cls is type(model)), "AutoModel")
    card = card or {}
    (folder / "README.md").write_text(model_card(type(model).__name__, model.config, auto_class=main_auto_class, **card))


class _StockCheckpointFilter:
    """Drops exactly Transformers' "You are using a model of type `dinov2` to instantiate a model of type
    `turbo_dinov2` ..." warning while a Turbo class loads a checkpoint of the stock model it extends (the
    supported path); a checkpoint of any other type still warns."""

    def __init__(self, config_class: type) -> None:
        types = [getattr(klass, "model_type", "") for klass in config_class.__mro__]
        turbo_type = config_class.model_type
        self.expected = {f"You are using a model of type `{stock}` to instantiate a model of type `{turbo_type}`."
                         for stock in types if stock and stock != turbo_type}

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not any(message.startswith(prefix) for prefix in self.expected)


class TurboHubMixin:
    """Gives Turbo model classes a `save_pretrained` that writes a self-contained Hub folder.

    Example:

    ```python
    >>> import os, tempfile
    >>> from transformers import AutoModel
    >>> from turbo_hf import TurboConfig, TurboViTModel
    >>> from turbo_hf.modeling import TurboViTConfig
    >>> config = TurboViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                         image_size=32, patch_size=8, turbo_config=TurboConfig(r=2))
    >>> folder = tempfile.mkdtemp()
    >>> TurboViTModel(config).save_pretrained(folder)  # or TurboViTModel.from_pretrained(stock_checkpoint, ...)
    >>> "modeling_turbo_vit.py" in os.listdir(folder), "README.md" in os.listdir(folder)
    (True, True)
    >>> type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__
    'TurboViTModel'
    ```
    """

    turbo_auto_classes: dict = {}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a `turbo_config=` keyword is checked first (a `TurboConfig` or a
        dict of its settings), so a wrong value fails with a clear error instead of deep inside loading."""
        # Overrides transformers.modeling_utils.PreTrainedModel.from_pretrained (v5.24)
        if kwargs.get("turbo_config") is not None:
            kwargs["turbo_config"] = as_turbo_config(kwargs["turbo_config"])
        config_logger = logging.get_logger("transformers.configuration_utils")
        expected = _StockCheckpointFilter(cls.config_class)
        config_logger.addFilter(expected)
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            config_logger.removeFilter(expected)

    def extra_repr(self) -> str:
        """`print(model)` shows the Turbo settings the model runs with (on the patched model's first line)."""
        patch = self.__dict__.get("_turbo_patch")
        stock = super().extra_repr()
        if patch is None:
            return stock
        settings = ", ".join(f"{name}={value!r}" for name, value in active_settings(patch.config).items())
        return f"turbo: {settings}" + (f"\n{stock}" if stock else "")

    def _initialize_weights(self, module, is_custom_code: bool = False):
        """Initialise `module` exactly as the stock class does.

        Transformers treats classes defined outside the library as custom code and then skips every module whose
        own parameters are all marked initialised, which includes modules with no parameters of their own
        (CLIP's and SigLIP's attention and MLP blocks, whose `_init_weights` sets their children's weights). The
        Turbo classes run the stock `_init_weights` (through `transformers.initialization`), so they take the
        stock path: a Turbo model built from a config equals the stock model built from the same config and seed.
        """
        # Overrides transformers.modeling_utils.PreTrainedModel._initialize_weights (v5.24)
        return super()._initialize_weights(module, is_custom_code=False)

    def save_pretrained(self, save_directory, *args, model_card: dict | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus `auto_map`, remote code and a model card.

        Args:
            model_card: optional `base_model`, `license`, `results_markdown` and `sources` for the model card.
        """
        # Overrides transformers.modeling_utils.PreTrainedModel.save_pretrained (v5.24)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if not str(getattr(type(self.config), "model_type", "")).startswith("turbo_"):
            logger.warning(
                f"{type(self).__name__} has a stock `{type(self.config).model_type}` config: the folder is a stock checkpoint "
                "and does not keep the Turbo settings. Build the model from a Turbo class to publish them."
            )
            return result
        write_hub_folder(self, save_directory, model_card)
        return result


__all__ = ["TurboHubMixin", "model_card", "remote_code_files", "write_hub_folder"]
