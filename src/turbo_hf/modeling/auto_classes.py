"""Registration of the Turbo configs and models with the Transformers Auto classes (on `import turbo_hf`)."""

from __future__ import annotations

import transformers
from transformers import AutoConfig

from .registry import registered_adapters


def register_auto_classes() -> None:
    """Register every family's Turbo config and model classes, so no remote code is needed to load them."""
    for adapter in registered_adapters():
        for config_class, auto_classes in adapter.hub_classes.items():
            AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
            for auto_name, model_class in auto_classes.items():
                getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)


__all__ = ["register_auto_classes"]
