"""The Turbo modelling code: the core, the shared kit, one `modeling_turbo_<family>.py` per family.

The files of this folder import each other only as `from .x import y`, so `save_pretrained` copies a family's
file and the core it imports into a Hub folder as they are. This `__init__` is not copied: it only gathers
every Turbo class and config for `from turbo_hf.modeling import ...` (the most used ones are also in `turbo_hf`).
"""

from .configuration_turbo import TurboConfig
from .configuration_turbo_llava import TurboLlavaConfig
from .configuration_turbo_qwen2_vl import TurboQwen2_5_VLConfig, TurboQwen2VLConfig, TurboQwen3VLConfig
from .modeling_turbo_bert import TurboBertConfig, TurboBertModel
from .modeling_turbo_blip import (
    TurboBlipConfig,
    TurboBlipForConditionalGeneration,
    TurboBlipForImageTextRetrieval,
    TurboBlipForQuestionAnswering,
    TurboBlipModel,
    TurboBlipVisionConfig,
    TurboBlipVisionModel,
)
from .modeling_turbo_blip2 import (
    TurboBlip2Config,
    TurboBlip2ForConditionalGeneration,
    TurboBlip2ForImageTextRetrieval,
    TurboBlip2VisionModel,
)
from .modeling_turbo_blip_text import TurboBlipTextItmModel, TurboBlipTextItmOutput
from .modeling_turbo_clip import (
    TurboCLIPConfig,
    TurboCLIPForImageClassification,
    TurboCLIPModel,
    TurboCLIPVisionConfig,
    TurboCLIPVisionModel,
    TurboCLIPVisionModelWithProjection,
)
from .modeling_turbo_dinov2 import TurboDinov2Config, TurboDinov2ForImageClassification, TurboDinov2Model
from .modeling_turbo_instructblip import (
    TurboInstructBlipConfig,
    TurboInstructBlipForConditionalGeneration,
    TurboInstructBlipVisionModel,
)
from .modeling_turbo_llava import TurboLlavaForConditionalGeneration, TurboLlavaModel
from .modeling_turbo_qwen2_vl import (
    TurboQwen2_5_VLForConditionalGeneration,
    TurboQwen2_5_VLModel,
    TurboQwen2VLForConditionalGeneration,
    TurboQwen2VLModel,
    TurboQwen3VLForConditionalGeneration,
    TurboQwen3VLModel,
)
from .modeling_turbo_siglip import (
    TurboSiglipConfig,
    TurboSiglipForImageClassification,
    TurboSiglipModel,
    TurboSiglipVisionConfig,
    TurboSiglipVisionModel,
)
from .modeling_turbo_text_towers import TurboCLIPTextModel, TurboSiglipTextModel
from .modeling_turbo_vit import TurboViTConfig, TurboViTForImageClassification, TurboViTModel
from .processing_turbo_llava import TurboLlavaProcessor
from .modeling_turbo_llava_next import TurboLlavaNextConfig, TurboLlavaNextForConditionalGeneration, TurboLlavaNextModel
from .modeling_turbo_llava_next_video import (
    TurboLlavaNextVideoConfig,
    TurboLlavaNextVideoForConditionalGeneration,
    TurboLlavaNextVideoModel,
)
from .modeling_turbo_llava_onevision import (
    TurboLlavaOnevisionConfig,
    TurboLlavaOnevisionForConditionalGeneration,
    TurboLlavaOnevisionModel,
)
from .processing_turbo_llava_next_video import TurboLlavaNextVideoProcessor
from .auto_classes import register_auto_classes

register_auto_classes()

__all__ = [
    "TurboBertConfig",
    "TurboBertModel",
    "TurboBlip2Config",
    "TurboBlip2ForConditionalGeneration",
    "TurboBlip2ForImageTextRetrieval",
    "TurboBlip2VisionModel",
    "TurboBlipConfig",
    "TurboBlipForConditionalGeneration",
    "TurboBlipForImageTextRetrieval",
    "TurboBlipForQuestionAnswering",
    "TurboBlipModel",
    "TurboBlipTextItmModel",
    "TurboBlipTextItmOutput",
    "TurboBlipVisionConfig",
    "TurboBlipVisionModel",
    "TurboCLIPConfig",
    "TurboCLIPForImageClassification",
    "TurboCLIPModel",
    "TurboCLIPTextModel",
    "TurboCLIPVisionConfig",
    "TurboCLIPVisionModel",
    "TurboCLIPVisionModelWithProjection",
    "TurboConfig",
    "TurboDinov2Config",
    "TurboDinov2ForImageClassification",
    "TurboDinov2Model",
    "TurboInstructBlipConfig",
    "TurboInstructBlipForConditionalGeneration",
    "TurboInstructBlipVisionModel",
    "TurboLlavaConfig",
    "TurboLlavaForConditionalGeneration",
    "TurboLlavaModel",
    "TurboLlavaNextConfig",
    "TurboLlavaNextForConditionalGeneration",
    "TurboLlavaNextModel",
    "TurboLlavaNextVideoConfig",
    "TurboLlavaNextVideoForConditionalGeneration",
    "TurboLlavaNextVideoModel",
    "TurboLlavaNextVideoProcessor",
    "TurboLlavaOnevisionConfig",
    "TurboLlavaOnevisionForConditionalGeneration",
    "TurboLlavaOnevisionModel",
    "TurboLlavaProcessor",
    "TurboQwen2VLConfig",
    "TurboQwen2VLForConditionalGeneration",
    "TurboQwen2VLModel",
    "TurboQwen2_5_VLConfig",
    "TurboQwen2_5_VLForConditionalGeneration",
    "TurboQwen2_5_VLModel",
    "TurboQwen3VLConfig",
    "TurboQwen3VLForConditionalGeneration",
    "TurboQwen3VLModel",
    "TurboSiglipConfig",
    "TurboSiglipForImageClassification",
    "TurboSiglipModel",
    "TurboSiglipTextModel",
    "TurboSiglipVisionConfig",
    "TurboSiglipVisionModel",
    "TurboViTConfig",
    "TurboViTForImageClassification",
    "TurboViTModel",
]
