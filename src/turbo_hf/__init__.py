"""turbo-hf: Turbo token merging (ECCV 2024) for Hugging Face Transformers models."""

from .modeling.configuration_turbo import TurboConfig
from .modeling.merging import unmerge
from .evaluation.calibration import CalibrationResult, calibrate
from .modeling.patching import apply_turbo, get_turbo_config, is_turbo_applied, remove_turbo, turbo, turbo_plan
from .testing.real_weights import fetch_real_weights
from .modeling.registry import supported_classes
from .modeling.modeling_turbo_bert import TurboBertConfig, TurboBertModel
from .modeling.modeling_turbo_blip import (
    TurboBlipConfig,
    TurboBlipForConditionalGeneration,
    TurboBlipForImageTextRetrieval,
    TurboBlipForQuestionAnswering,
    TurboBlipModel,
    TurboBlipVisionConfig,
    TurboBlipVisionModel,
)
from .modeling.modeling_turbo_blip_text import TurboBlipTextItmModel, TurboBlipTextItmOutput
from .modeling.modeling_turbo_blip2 import TurboBlip2Config, TurboBlip2ForConditionalGeneration, TurboBlip2ForImageTextRetrieval
from .modeling.modeling_turbo_clip import (
    TurboCLIPConfig,
    TurboCLIPForImageClassification,
    TurboCLIPModel,
    TurboCLIPVisionConfig,
    TurboCLIPVisionModel,
    TurboCLIPVisionModelWithProjection,
)
from .modeling.modeling_turbo_dinov2 import TurboDinov2Config, TurboDinov2ForImageClassification, TurboDinov2Model
from .modeling.modeling_turbo_siglip import (
    TurboSiglipConfig,
    TurboSiglipForImageClassification,
    TurboSiglipModel,
    TurboSiglipVisionConfig,
    TurboSiglipVisionModel,
)
from .modeling.modeling_turbo_text_towers import TurboCLIPTextModel, TurboSiglipTextModel
from .modeling.modeling_turbo_instructblip import TurboInstructBlipConfig, TurboInstructBlipForConditionalGeneration
from .modeling.modeling_turbo_llava import TurboLlavaConfig, TurboLlavaForConditionalGeneration, TurboLlavaModel
from .modeling.modeling_turbo_vit import TurboViTConfig, TurboViTForImageClassification, TurboViTModel
from .modeling.processing_turbo_llava import TurboLlavaProcessor
from .modeling.auto_classes import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "CalibrationResult",
    "TurboConfig",
    "TurboBertConfig",
    "TurboBertModel",
    "TurboBlip2Config",
    "TurboBlip2ForConditionalGeneration",
    "TurboBlip2ForImageTextRetrieval",
    "TurboBlipConfig",
    "TurboBlipForConditionalGeneration",
    "TurboBlipForImageTextRetrieval",
    "TurboBlipForQuestionAnswering",
    "TurboBlipModel",
    "TurboBlipVisionConfig",
    "TurboBlipTextItmModel",
    "TurboBlipTextItmOutput",
    "TurboBlipVisionModel",
    "TurboCLIPConfig",
    "TurboCLIPForImageClassification",
    "TurboCLIPModel",
    "TurboCLIPVisionConfig",
    "TurboCLIPVisionModel",
    "TurboCLIPVisionModelWithProjection",
    "TurboDinov2Config",
    "TurboDinov2ForImageClassification",
    "TurboDinov2Model",
    "TurboCLIPTextModel",
    "TurboSiglipTextModel",
    "TurboInstructBlipConfig",
    "TurboInstructBlipForConditionalGeneration",
    "TurboLlavaConfig",
    "TurboLlavaForConditionalGeneration",
    "TurboLlavaModel",
    "TurboLlavaProcessor",
    "TurboSiglipConfig",
    "TurboSiglipForImageClassification",
    "TurboSiglipModel",
    "TurboSiglipVisionConfig",
    "TurboSiglipVisionModel",
    "TurboViTConfig",
    "TurboViTForImageClassification",
    "TurboViTModel",
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
