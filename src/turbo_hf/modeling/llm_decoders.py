"""The Turbo classes of the stock decoder stacks and decoder layers the in-LLM reduction wraps, one pair per
language model (`llm_decoder_layers.py` holds what they do; a new decoder is two lines here and an entry in its
family's `class_map`)."""

from __future__ import annotations

from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2Model
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer, Qwen2_5_VLTextModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLTextModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer, Qwen3VLTextModel

from .llm_decoder_layers import TurboDecoderLayerMixin, TurboDecoderModelMixin


class TurboLlamaModel(TurboDecoderModelMixin, LlamaModel):
    """`LlamaModel` (LLaVA's language model) that reduces image tokens inside when asked."""


class TurboLlamaDecoderLayer(TurboDecoderLayerMixin, LlamaDecoderLayer):
    """`LlamaDecoderLayer` whose inputs an in-LLM reduction rewrites."""

    # Overrides transformers.models.llama.modeling_llama.LlamaDecoderLayer.forward (v5.24)


class TurboQwen2Model(TurboDecoderModelMixin, Qwen2Model):
    """`Qwen2Model` (LLaVA-OneVision's language model) that reduces image tokens inside when asked."""


class TurboQwen2DecoderLayer(TurboDecoderLayerMixin, Qwen2DecoderLayer):
    """`Qwen2DecoderLayer` whose inputs an in-LLM reduction rewrites."""

    # Overrides transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer.forward (v5.24)


class TurboQwen2VLTextModel(TurboDecoderModelMixin, Qwen2VLTextModel):
    """`Qwen2VLTextModel` that reduces image tokens inside when asked."""


class TurboQwen2VLDecoderLayer(TurboDecoderLayerMixin, Qwen2VLDecoderLayer):
    """`Qwen2VLDecoderLayer` whose inputs an in-LLM reduction rewrites."""

    # Overrides transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLDecoderLayer.forward (v5.24)


class TurboQwen2_5_VLTextModel(TurboDecoderModelMixin, Qwen2_5_VLTextModel):
    """`Qwen2_5_VLTextModel` that reduces image tokens inside when asked."""


class TurboQwen2_5_VLDecoderLayer(TurboDecoderLayerMixin, Qwen2_5_VLDecoderLayer):
    """`Qwen2_5_VLDecoderLayer` whose inputs an in-LLM reduction rewrites."""

    # Overrides transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLDecoderLayer.forward (v5.24)


class TurboQwen3VLTextModel(TurboDecoderModelMixin, Qwen3VLTextModel):
    """`Qwen3VLTextModel` that reduces image tokens inside when asked (after its deepstack layers)."""


class TurboQwen3VLTextDecoderLayer(TurboDecoderLayerMixin, Qwen3VLTextDecoderLayer):
    """`Qwen3VLTextDecoderLayer` whose inputs an in-LLM reduction rewrites."""

    # Overrides transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextDecoderLayer.forward (v5.24)


LLAMA_DECODER = {LlamaModel: TurboLlamaModel, LlamaDecoderLayer: TurboLlamaDecoderLayer}
QWEN2_DECODER = {Qwen2Model: TurboQwen2Model, Qwen2DecoderLayer: TurboQwen2DecoderLayer}
QWEN2_VL_DECODER = {Qwen2VLTextModel: TurboQwen2VLTextModel, Qwen2VLDecoderLayer: TurboQwen2VLDecoderLayer}
QWEN2_5_VL_DECODER = {
    Qwen2_5_VLTextModel: TurboQwen2_5_VLTextModel,
    Qwen2_5_VLDecoderLayer: TurboQwen2_5_VLDecoderLayer,
}

QWEN3_VL_DECODER = {
    Qwen3VLTextModel: TurboQwen3VLTextModel,
    Qwen3VLTextDecoderLayer: TurboQwen3VLTextDecoderLayer,
}


def supported_decoders(class_map: dict[type, type]) -> tuple[type, ...]:
    """The text-model classes (stock and Turbo) of a decoder class map, for `check_llm_reduction`."""
    return tuple(
        cls for stock, turbo in class_map.items() if issubclass(turbo, TurboDecoderModelMixin) for cls in (stock, turbo)
    )


__all__ = [
    "LLAMA_DECODER",
    "QWEN2_5_VL_DECODER",
    "QWEN2_DECODER",
    "QWEN2_VL_DECODER",
    "QWEN3_VL_DECODER",
    "TurboLlamaDecoderLayer",
    "TurboLlamaModel",
    "TurboQwen2DecoderLayer",
    "TurboQwen2Model",
    "TurboQwen2VLDecoderLayer",
    "TurboQwen2VLTextModel",
    "TurboQwen2_5_VLDecoderLayer",
    "TurboQwen2_5_VLTextModel",
    "TurboQwen3VLTextDecoderLayer",
    "TurboQwen3VLTextModel",
    "supported_decoders",
]
