"""turbo-hf: Turbo token merging (ECCV 2024) for Hugging Face Transformers models.

The names here are the ones most code needs: the config, the patching functions, `unmerge`, calibration and the
main Turbo class of each family. Every Turbo class and config (vision towers, configs, text towers, ...) is in
`turbo_hf.modeling`; evaluation, command-line and test helpers are in `turbo_hf.evaluation`, `turbo_hf.cli` and
`turbo_hf.testing`.
"""

from .modeling import (
    TurboBertModel,
    TurboBlip2ForConditionalGeneration,
    TurboBlipForConditionalGeneration,
    TurboBlipForImageTextRetrieval,
    TurboBlipForQuestionAnswering,
    TurboCLIPModel,
    TurboCLIPVisionModel,
    TurboConfig,
    TurboDinov2ForImageClassification,
    TurboDinov2Model,
    TurboInstructBlipForConditionalGeneration,
    TurboLlavaForConditionalGeneration,
    TurboLlavaProcessor,
    TurboQwen2VLForConditionalGeneration,
    TurboQwen2_5_VLForConditionalGeneration,
    TurboQwen3VLForConditionalGeneration,
    TurboSiglipModel,
    TurboSiglipVisionModel,
    TurboViTForImageClassification,
    TurboViTModel,
)
from .modeling.merging import unmerge
from .modeling.patching import apply_turbo, get_turbo_config, is_turbo_applied, remove_turbo, turbo, turbo_plan
from .modeling.registry import supported_classes
from .evaluation.calibration import CalibrationResult, calibrate

__version__ = "0.1.0"

__all__ = [
    "CalibrationResult",
    "TurboBertModel",
    "TurboBlip2ForConditionalGeneration",
    "TurboBlipForConditionalGeneration",
    "TurboBlipForImageTextRetrieval",
    "TurboBlipForQuestionAnswering",
    "TurboCLIPModel",
    "TurboCLIPVisionModel",
    "TurboConfig",
    "TurboDinov2ForImageClassification",
    "TurboDinov2Model",
    "TurboInstructBlipForConditionalGeneration",
    "TurboLlavaForConditionalGeneration",
    "TurboLlavaProcessor",
    "TurboQwen2VLForConditionalGeneration",
    "TurboQwen2_5_VLForConditionalGeneration",
    "TurboQwen3VLForConditionalGeneration",
    "TurboSiglipModel",
    "TurboSiglipVisionModel",
    "TurboViTForImageClassification",
    "TurboViTModel",
    "apply_turbo",
    "calibrate",
    "get_turbo_config",
    "is_turbo_applied",
    "remove_turbo",
    "supported_classes",
    "turbo",
    "turbo_plan",
    "unmerge",
]
