"""Turbo for Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration` and their `...Model`): image tokens
reduced inside the language model (`llm_layers`, `llm_keep`, `llm_text_query`).

What changes against the stock model, only when `llm_layers` is set: before each decoder layer `K` of `llm_layers`
every image keeps `llm_keep` of its tokens (a count, or a share of its own token count: Qwen images have as many
tokens as their grid, `t * h * w / merge_size**2`, so one batch mixes images of different sizes), scored with
Turbo's information degree on that layer's keys and the text queries' attention rows. The stock forwards run
unchanged (`llm_decoder_layers.py` wraps the text model and its decoder layers); the 3-D mRoPE positions are the
stock `get_rope_index` ones, computed on the full prompt and gathered for the kept tokens, so each kept token keeps
its (t, h, w) position and `rope_deltas` (kept on the model by the stock code) stay right for the generated tokens:
their positions are the stock ones. Left-padded batched `generate()`, DynamicCache and StaticCache as for LLaVA.

Qwen3-VL adds its deepstack image features to the full-length hidden states after its first decoder layers (one per
`deepstack_visual_indexes` entry): reductions start at that layer or later (refused earlier, at `apply_turbo`).

Videos: each video is one visual item, all its frames' tokens reduced jointly (`llm_keep` applies per video: the
same content in consecutive frames merges); Qwen3-VL's timestamps between a video's frames stay text tokens.

Not done here: merging inside the vision tower (2-D RoPE, windowed attention in 2.5, the 2x2 patch merger that
needs the full grid): `r` and `flops_ratio` are refused. With no `llm_layers` the model is the stock one, bit for
bit.
"""

from __future__ import annotations

from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
)
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration, Qwen2VLModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLForConditionalGeneration, Qwen3VLModel

from .configuration_turbo import as_turbo_config
from .configuration_turbo_qwen2_vl import TurboQwen2_5_VLConfig, TurboQwen2VLConfig, TurboQwen3VLConfig
from .hub_export import TurboHubMixin
from .llm_decoder_layers import check_llm_reduction, llm_bias_step, llm_reduction_request
from .llm_decoders import QWEN2_5_VL_DECODER, QWEN2_VL_DECODER, QWEN3_VL_DECODER, supported_decoders
from .llm_token_layout import visual_item_counts
from .llm_token_reduction import LLMReductionRequest
from .patching import apply_turbo_from_config
from .registry import FamilyAdapter, register_adapter

NOMINAL_PATCHES = 1024  # a 448 x 448 image in 14 px patches: what `turbo_plan` reports (the tower merges nothing)


class TurboQwenVLModelMixin:
    """The inner Qwen-VL model: hands its text model a reduction request for each prompt that holds images or
    videos."""

    def forward(self, *args, **kwargs):
        # Overrides transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLModel.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLModel.forward (v5.24): a wrapper
        # Overrides transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLModel.forward (v5.24): a wrapper
        request = self._llm_request(args[0] if args else kwargs.get("input_ids"), kwargs)
        with llm_reduction_request(self.language_model, request):
            return super().forward(*args, **kwargs)

    def _llm_request(self, input_ids, kwargs) -> LLMReductionRequest | None:
        turbo = self.turbo_runtime.config
        if not turbo.reduces_llm_tokens:
            return None
        encoded = kwargs.get("mm_encoder_outputs") or {}  # `generate()` encodes the images and videos first
        if input_ids is None:
            if any(kwargs.get(key) is not None for key in ("pixel_values", "pixel_values_videos")) or encoded:
                raise ValueError("Image token reduction inside the language model (`llm_layers`) needs `input_ids`.")
            return None
        merge = self.config.vision_config.spatial_merge_size**2
        counts = {}
        for kind, pixels in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            token = getattr(self.config, f"{kind}_token_id")
            grid = kwargs.get(f"{kind}_grid_thw")
            if encoded.get(kind) is not None:
                counts[token] = [features.shape[0] for features in encoded[kind].pooler_output]
            elif kwargs.get(pixels) is not None:
                if grid is None:
                    raise ValueError(f"Image token reduction inside the language model needs `{kind}_grid_thw` with "
                                     f"`{pixels}`.")
                counts[token] = (grid.prod(-1) // merge).tolist()
        if not counts:  # a text-only prompt, or a decoding step
            return None
        is_visual, items = visual_item_counts(input_ids, counts)
        return LLMReductionRequest(
            is_visual=is_visual, item_counts=items, sizes=None, key_bias=None, bias_step=llm_bias_step(turbo),
            config=turbo,
        )


class TurboFromConfigMixin:
    """Applies the `turbo_config` of the model's config when the model is built (as every Turbo class does)."""

    def __init__(self, config):
        super().__init__(config)
        apply_turbo_from_config(self)


QWEN2VL_NO_SPLIT = ["Qwen2VLDecoderLayer", "TurboQwen2VLDecoderLayer", "Qwen2VLVisionBlock"]

class TurboQwen2VLModel(TurboQwenVLModelMixin, TurboFromConfigMixin, TurboHubMixin, Qwen2VLModel):
    """`Qwen2VLModel` whose language model reduces image tokens inside (`llm_layers`)."""

    config_class = TurboQwen2VLConfig
    _no_split_modules = QWEN2VL_NO_SPLIT


class TurboQwen2VLForConditionalGeneration(TurboFromConfigMixin, TurboHubMixin, Qwen2VLForConditionalGeneration):
    """`Qwen2VLForConditionalGeneration` with Turbo: image tokens reduced inside the language model.

    Example:

    ```python
    >>> from turbo_hf.modeling.modeling_turbo_qwen2_vl import TurboQwen2VLConfig, TurboQwen2VLForConditionalGeneration
    >>> text = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    ...             num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1]})
    >>> vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=2)
    >>> config = TurboQwen2VLConfig(text_config=text, vision_config=vision, image_token_id=97, video_token_id=98,
    ...                             turbo_config={"llm_layers": [1], "llm_keep": [0.5]})
    >>> TurboQwen2VLForConditionalGeneration(config).model.turbo_runtime.config.llm_keep
    [0.5]
    ```
    """

    config_class = TurboQwen2VLConfig
    _no_split_modules = QWEN2VL_NO_SPLIT


QWEN2_5_VL_NO_SPLIT = ["Qwen2_5_VLDecoderLayer", "TurboQwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]

class TurboQwen2_5_VLModel(TurboQwenVLModelMixin, TurboFromConfigMixin, TurboHubMixin, Qwen2_5_VLModel):
    """`Qwen2_5_VLModel` whose language model reduces image tokens inside (`llm_layers`)."""

    config_class = TurboQwen2_5_VLConfig
    _no_split_modules = QWEN2_5_VL_NO_SPLIT


class TurboQwen2_5_VLForConditionalGeneration(TurboFromConfigMixin, TurboHubMixin, Qwen2_5_VLForConditionalGeneration):
    """`Qwen2_5_VLForConditionalGeneration` with Turbo: image tokens reduced inside the language model."""

    config_class = TurboQwen2_5_VLConfig
    _no_split_modules = QWEN2_5_VL_NO_SPLIT


QWEN3VL_NO_SPLIT = ["Qwen3VLTextDecoderLayer", "TurboQwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]

class TurboQwen3VLModel(TurboQwenVLModelMixin, TurboFromConfigMixin, TurboHubMixin, Qwen3VLModel):
    """`Qwen3VLModel` whose language model reduces image tokens inside (`llm_layers` after its deepstack layers)."""

    config_class = TurboQwen3VLConfig
    _no_split_modules = QWEN3VL_NO_SPLIT


class TurboQwen3VLForConditionalGeneration(TurboFromConfigMixin, TurboHubMixin, Qwen3VLForConditionalGeneration):
    """`Qwen3VLForConditionalGeneration` with Turbo: image tokens reduced inside the language model."""

    config_class = TurboQwen3VLConfig
    _no_split_modules = QWEN3VL_NO_SPLIT


# ----------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------


GENERATION_CLASSES = (
    Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration,
)


def _qwen_models(model) -> list:
    return [model.model if isinstance(model, GENERATION_CLASSES) else model]


def _validate_qwen(model, config) -> None:
    config = as_turbo_config(config)
    if config.removes_tokens:
        raise ValueError(
            f"Turbo for {type(model).__name__} reduces image tokens inside the language model only (`llm_layers`, "
            "`llm_keep`); merging inside its vision tower (`r`, `flops_ratio`) is not supported (2-D RoPE over the "
            "full grid, windowed attention in 2.5, the 2x2 patch merger). Use r=0."
        )
    inner = _qwen_models(model)[0]
    decoders = supported_decoders({**QWEN2_VL_DECODER, **QWEN2_5_VL_DECODER, **QWEN3_VL_DECODER})
    check_llm_reduction(inner.language_model, config, decoders)
    deepstack = len(getattr(inner.config.vision_config, "deepstack_visual_indexes", None) or [])
    if config.reduces_llm_tokens and config.llm_layers[0] < deepstack:
        raise ValueError(
            f"`llm_layers={config.llm_layers}`: Qwen3-VL adds its deepstack image features to the full-length hidden "
            f"states after each of its first {deepstack} decoder layers, so image tokens can be reduced before layer "
            f"{deepstack} or later only."
        )


QWEN2_VL_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboQwen2VLForConditionalGeneration,
    "AutoModel": TurboQwen2VLModel,
}
QWEN2_5_VL_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboQwen2_5_VLForConditionalGeneration,
    "AutoModel": TurboQwen2_5_VLModel,
}
TurboQwen2VLForConditionalGeneration.turbo_auto_classes = QWEN2_VL_AUTO_CLASSES
TurboQwen2VLModel.turbo_auto_classes = QWEN2_VL_AUTO_CLASSES
TurboQwen2_5_VLForConditionalGeneration.turbo_auto_classes = QWEN2_5_VL_AUTO_CLASSES
TurboQwen2_5_VLModel.turbo_auto_classes = QWEN2_5_VL_AUTO_CLASSES
QWEN3_VL_AUTO_CLASSES = {
    "AutoModelForImageTextToText": TurboQwen3VLForConditionalGeneration,
    "AutoModel": TurboQwen3VLModel,
}
TurboQwen3VLForConditionalGeneration.turbo_auto_classes = QWEN3_VL_AUTO_CLASSES
TurboQwen3VLModel.turbo_auto_classes = QWEN3_VL_AUTO_CLASSES

# what both families share: the vision blocks only give `turbo_plan` its layer cost (nothing merges there)
QWEN_ADAPTER = {
    "spatial_only": True,
    "vision_models": _qwen_models,
    "layers": lambda qwen_model: qwen_model.visual.blocks,
    "attention_attr": "attn",
    "mlp_attr": "mlp",
    "protect_first": False,
    "summary_query": "mean",
    "tokens_for_config": lambda config: NOMINAL_PATCHES,
    "validate": _validate_qwen,  # refuses `r` and impossible `llm_layers`/`llm_keep` inside `apply_turbo`
}
QWEN2_VL_CLASSES = {Qwen2VLForConditionalGeneration: TurboQwen2VLForConditionalGeneration,
                    Qwen2VLModel: TurboQwen2VLModel, **QWEN2_VL_DECODER}
QWEN2_5_VL_CLASSES = {Qwen2_5_VLForConditionalGeneration: TurboQwen2_5_VLForConditionalGeneration,
                      Qwen2_5_VLModel: TurboQwen2_5_VLModel, **QWEN2_5_VL_DECODER}
register_adapter(FamilyAdapter(name="qwen2_vl", model_classes=(Qwen2VLForConditionalGeneration, Qwen2VLModel),
                               class_map=QWEN2_VL_CLASSES, hub_classes={TurboQwen2VLConfig: QWEN2_VL_AUTO_CLASSES},
                               **QWEN_ADAPTER))
register_adapter(FamilyAdapter(name="qwen2_5_vl", model_classes=(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel),
                               class_map=QWEN2_5_VL_CLASSES,
                               hub_classes={TurboQwen2_5_VLConfig: QWEN2_5_VL_AUTO_CLASSES}, **QWEN_ADAPTER))
QWEN3_VL_CLASSES = {Qwen3VLForConditionalGeneration: TurboQwen3VLForConditionalGeneration,
                    Qwen3VLModel: TurboQwen3VLModel, **QWEN3_VL_DECODER}
register_adapter(FamilyAdapter(name="qwen3_vl", model_classes=(Qwen3VLForConditionalGeneration, Qwen3VLModel),
                               class_map=QWEN3_VL_CLASSES, hub_classes={TurboQwen3VLConfig: QWEN3_VL_AUTO_CLASSES},
                               **QWEN_ADAPTER))

__all__ = [
    "TurboQwen2VLForConditionalGeneration",
    "TurboQwen2VLModel",
    "TurboQwen2_5_VLForConditionalGeneration",
    "TurboQwen2_5_VLModel",
    "TurboQwen3VLForConditionalGeneration",
    "TurboQwen3VLModel",
]
