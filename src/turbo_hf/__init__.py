"""turbo-hf: Turbo token merging (ECCV 2024) for Hugging Face Transformers models."""

from .configuration_turbo import TurboConfig
from .merging import unmerge
from .calibration import CalibrationResult, calibrate
from .patching import apply_turbo, get_turbo_config, is_turbo_applied, remove_turbo, turbo, turbo_plan
from .real_weights import fetch_real_weights
from .registry import supported_classes
from . import adapter_clip, adapter_dinov2, adapter_siglip, adapter_vit  # noqa: F401  (each registers its family)

__version__ = "0.1.0"

__all__ = [
    "CalibrationResult",
    "TurboConfig",
    "apply_turbo",
    "calibrate",
    "fetch_real_weights",
    "get_turbo_config",
    "is_turbo_applied",
    "remove_turbo",
    "supported_classes",
    "turbo",
    "turbo_plan",
    "unmerge",
]
