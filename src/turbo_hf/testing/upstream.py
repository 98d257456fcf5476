"""Every place turbo-hf depends on Transformers internals, and the check that says when upstream moved.

Three kinds of dependency are listed here, and nowhere else:

- `OVERRIDES`: each method of a Turbo class that replaces a stock Transformers method (a forward re-implemented
  with token merging, or a wrapper around the stock one). Each carries a `Copied from <upstream> (v5.x)` line
  (a re-implementation) or an `Overrides <upstream> (v5.x)` line (a wrapper) in its source.
- `INTERNALS`: private helpers, registries and attributes the code reaches (not public API).
- `OUTPUT_FIELDS`: stock output classes the code builds or reads, and the fields it relies on.

`check_upstream()` compares the installed Transformers with what was reviewed: the source of every overridden
method and private helper is fingerprinted (a hash of its normalised `inspect.getsource`) and looked up among
the fingerprints recorded for the tested releases (`upstream_fingerprints.json`); a missing helper, a changed
source or a missing output field is reported with the name of our code to re-check. After reviewing a new
release, record its fingerprints with `python -m turbo_hf.testing.upstream --record`.

Example:

```python
>>> from turbo_hf.testing.upstream import OVERRIDES, check_upstream
>>> any(entry.ours == "turbo_hf.modeling.modeling_turbo_vit.TurboViTLayer.forward" for entry in OVERRIDES)
True
>>> check_upstream()  # the installed Transformers is a reviewed one: nothing to re-check
[]
```
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

FINGERPRINTS_FILE = Path(__file__).with_name("upstream_fingerprints.json")


@dataclasses.dataclass(frozen=True)
class Override:
    """A Turbo method (`ours`) that replaces a stock method (`upstream`); both are dotted paths."""

    ours: str
    upstream: str


@dataclasses.dataclass(frozen=True)
class Internal:
    """A private Transformers helper, registry or attribute (`name`, a dotted path) that `used_by` relies on."""

    name: str
    used_by: str


@dataclasses.dataclass(frozen=True)
class OutputFields:
    """A stock output class (`output_class`) whose `fields` `used_by` builds or reads."""

    output_class: str
    fields: tuple[str, ...]
    used_by: str


def _override(ours_class: str, upstream_class: str, *methods: str) -> list[Override]:
    return [Override(f"turbo_hf.{ours_class}.{m}", f"transformers.models.{upstream_class}.{m}") for m in methods]


OVERRIDES: tuple[Override, ...] = tuple(
    _override("modeling.modeling_turbo_bert.TurboBertSelfAttention", "bert.modeling_bert.BertSelfAttention", "forward")
    + _override("modeling.modeling_turbo_bert.TurboBertAttention", "bert.modeling_bert.BertAttention", "forward")
    + _override("modeling.modeling_turbo_bert.TurboBertLayer", "bert.modeling_bert.BertLayer", "forward")
    + _override("modeling.modeling_turbo_bert.TurboBertModel", "bert.modeling_bert.BertModel", "forward")
    + _override("modeling.modeling_turbo_blip.TurboBlipVisionModel", "blip.modeling_blip.BlipVisionModel", "forward")
    + _override("modeling.blip_layers.TurboBlipTextCrossAttention", "blip.modeling_blip_text.BlipTextAttention", "forward")
    + _override("modeling.modeling_turbo_blip.TurboBlipForConditionalGeneration", "blip.modeling_blip.BlipForConditionalGeneration",
                "forward", "generate")
    + _override("modeling.modeling_turbo_blip.TurboBlipForImageTextRetrieval", "blip.modeling_blip.BlipForImageTextRetrieval",
                "forward")
    + _override("modeling.modeling_turbo_blip.TurboBlipForQuestionAnswering", "blip.modeling_blip.BlipForQuestionAnswering",
                "forward", "generate")
    + _override("modeling.modeling_turbo_blip.TurboBlipModel", "blip.modeling_blip.BlipModel", "get_multimodal_features")
    + _override("modeling.modeling_turbo_blip2.TurboBlip2VisionModel", "blip_2.modeling_blip_2.Blip2VisionModel", "forward")
    + _override("modeling.modeling_turbo_blip2.TurboBlip2ForConditionalGeneration",
                "blip_2.modeling_blip_2.Blip2ForConditionalGeneration", "get_image_features", "generate")
    + _override("modeling.modeling_turbo_blip2.TurboBlip2ForImageTextRetrieval", "blip_2.modeling_blip_2.Blip2ForImageTextRetrieval",
                "forward")
    + _override("modeling.modeling_turbo_blip_text.TurboBlipTextItmModel", "blip.modeling_blip_text.BlipTextModel", "forward")
    + _override("modeling.modeling_turbo_clip.TurboCLIPVisionModel", "clip.modeling_clip.CLIPVisionModel", "forward")
    + _override("modeling.modeling_turbo_clip.TurboCLIPForImageClassification", "clip.modeling_clip.CLIPForImageClassification",
                "forward")
    + _override("modeling.modeling_turbo_dinov2.TurboDinov2Model", "dinov2.modeling_dinov2.Dinov2Model", "forward")
    + _override("modeling.modeling_turbo_dinov2.TurboDinov2ForImageClassification",
                "dinov2.modeling_dinov2.Dinov2ForImageClassification", "forward")
    + _override("modeling.modeling_turbo_instructblip.TurboInstructBlipVisionModel",
                "instructblip.modeling_instructblip.InstructBlipVisionModel", "forward")
    + _override("modeling.modeling_turbo_instructblip.TurboInstructBlipForConditionalGeneration",
                "instructblip.modeling_instructblip.InstructBlipForConditionalGeneration", "get_image_features")
    + _override("modeling.llava_vision_tower.TurboLlavaCLIPEncoder", "clip.modeling_clip.CLIPEncoder", "forward")
    + _override("modeling.modeling_turbo_llava.TurboLlavaModel", "llava.modeling_llava.LlavaModel",
                "get_image_features", "get_placeholder_mask", "forward")
    + _override("modeling.modeling_turbo_siglip.TurboSiglipMultiheadAttentionPoolingHead",
                "siglip.modeling_siglip.SiglipMultiheadAttentionPoolingHead", "forward")
    + _override("modeling.modeling_turbo_siglip.TurboSiglipVisionModel", "siglip.modeling_siglip.SiglipVisionModel", "forward")
    + _override("modeling.modeling_turbo_siglip.TurboSiglipForImageClassification",
                "siglip.modeling_siglip.SiglipForImageClassification", "forward")
    + _override("modeling.modeling_turbo_text_towers.TurboCLIPTextEncoderLayer", "clip.modeling_clip.CLIPEncoderLayer", "forward")
    + _override("modeling.modeling_turbo_text_towers.TurboSiglipTextEncoderLayer", "siglip.modeling_siglip.SiglipEncoderLayer",
                "forward")
    + _override("modeling.modeling_turbo_text_towers.TurboCLIPTextModel", "clip.modeling_clip.CLIPTextModel", "forward")
    + _override("modeling.modeling_turbo_text_towers.TurboSiglipTextModel", "siglip.modeling_siglip.SiglipTextModel", "forward")
    + _override("modeling.blip_layers.TurboBlipEncoderLayer", "blip.modeling_blip.BlipEncoderLayer", "forward")
    + _override("modeling.modeling_turbo_blip2.TurboBlip2EncoderLayer", "blip_2.modeling_blip_2.Blip2EncoderLayer", "forward")
    + _override("modeling.modeling_turbo_clip.TurboCLIPEncoderLayer", "clip.modeling_clip.CLIPEncoderLayer", "forward")
    + _override("modeling.modeling_turbo_dinov2.TurboDinov2Layer", "dinov2.modeling_dinov2.Dinov2Layer", "forward")
    + _override("modeling.modeling_turbo_instructblip.TurboInstructBlipEncoderLayer",
                "instructblip.modeling_instructblip.InstructBlipEncoderLayer", "forward")
    + _override("modeling.modeling_turbo_siglip.TurboSiglipEncoderLayer", "siglip.modeling_siglip.SiglipEncoderLayer", "forward")
    + _override("modeling.modeling_turbo_vit.TurboViTLayer", "vit.modeling_vit.ViTLayer", "forward")
    + _override("modeling.modeling_turbo_vit.TurboViTModel", "vit.modeling_vit.ViTModel", "forward")
    + _override("modeling.processing_turbo_llava.TurboLlavaProcessor", "llava.processing_llava.LlavaProcessor",
                "replace_image_token", "_get_num_multimodal_tokens")
    + [
        Override("turbo_hf.modeling.configuration_turbo.TurboConfig.from_dict",
                 "transformers.configuration_utils.PreTrainedConfig.from_dict"),
        Override("turbo_hf.modeling.hub_export.TurboHubMixin.save_pretrained",
                 "transformers.modeling_utils.PreTrainedModel.save_pretrained"),
        Override("turbo_hf.modeling.hub_export.TurboHubMixin.from_pretrained",
                 "transformers.modeling_utils.PreTrainedModel.from_pretrained"),
        *(
            Override("turbo_hf.modeling.turbo_attention.TurboAttentionMixin.forward", f"transformers.models.{path}.forward")
            for path in ("blip.modeling_blip.BlipAttention", "blip_2.modeling_blip_2.Blip2Attention",
                         "clip.modeling_clip.CLIPAttention", "dinov2.modeling_dinov2.Dinov2Attention",
                         "instructblip.modeling_instructblip.InstructBlipAttention",
                         "siglip.modeling_siglip.SiglipAttention", "vit.modeling_vit.ViTAttention")
        ),
        *(
            Override("turbo_hf.modeling.turbo_layers.TurboPreNormLayerMixin.forward", f"transformers.models.{path}.forward")
            for path in ("blip.modeling_blip.BlipEncoderLayer", "blip_2.modeling_blip_2.Blip2EncoderLayer",
                         "clip.modeling_clip.CLIPEncoderLayer", "dinov2.modeling_dinov2.Dinov2Layer",
                         "instructblip.modeling_instructblip.InstructBlipEncoderLayer",
                         "siglip.modeling_siglip.SiglipEncoderLayer", "vit.modeling_vit.ViTLayer")
        ),
        Override("turbo_hf.modeling.hub_export.TurboHubMixin._initialize_weights",
                 "transformers.modeling_utils.PreTrainedModel._initialize_weights"),
        # copies under another name
        Override("turbo_hf.modeling.blip_layers.blip_eager_attention",
                 "transformers.models.blip.modeling_blip.BlipAttention.forward"),
        Override("turbo_hf.modeling.modeling_turbo_dinov2.encoder_forward",
                 "transformers.models.dinov2.modeling_dinov2.Dinov2Encoder.forward"),
        Override("turbo_hf.modeling.modeling_turbo_blip_text.blip_text_eager_attention",
                 "transformers.models.blip.modeling_blip_text.BlipTextSelfAttention.forward"),
        Override("turbo_hf.modeling.llm_token_scores.rotary", "transformers.models.llama.modeling_llama.apply_rotary_pos_emb"),
        # the in-LLM reduction's wrappers of the stock decoder stacks and layers (their forwards run unchanged)
        *(
            Override("turbo_hf.modeling.llm_decoder_layers.TurboDecoderModelMixin.forward",
                     f"transformers.models.{path}.forward")
            for path in ("llama.modeling_llama.LlamaModel", "qwen2_vl.modeling_qwen2_vl.Qwen2VLTextModel",
                         "qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLTextModel", "qwen3_vl.modeling_qwen3_vl.Qwen3VLTextModel")
        ),
        # (GradientCheckpointingLayer also gives each decoder-layer subclass its own `forward`: listed per class)
        *(
            Override(ours, f"transformers.models.{path}.forward")
            for path in ("llama.modeling_llama.LlamaDecoderLayer", "qwen2_vl.modeling_qwen2_vl.Qwen2VLDecoderLayer",
                         "qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLDecoderLayer",
                         "qwen3_vl.modeling_qwen3_vl.Qwen3VLTextDecoderLayer")
            for ours in ("turbo_hf.modeling.llm_decoder_layers.TurboDecoderLayerMixin.forward",
                         f"turbo_hf.modeling.llm_decoders.Turbo{path.rsplit('.', 1)[1]}.forward")
        ),
        *(
            Override("turbo_hf.modeling.modeling_turbo_qwen2_vl.TurboQwenVLModelMixin.forward",
                     f"transformers.models.{path}.forward")
            for path in ("qwen2_vl.modeling_qwen2_vl.Qwen2VLModel", "qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLModel",
                         "qwen3_vl.modeling_qwen3_vl.Qwen3VLModel")
        ),
        # LLaVA-NeXT-style families: the grid-restoring towers, the placeholder check, the video merge
        *(
            Override(f"turbo_hf.modeling.llava_next_kit.{ours}", f"transformers.models.{path}.forward")
            for ours, path in (
                ("TurboGridTowerMixin.forward", "clip.modeling_clip.CLIPVisionModel"),
                ("TurboGridTowerMixin.forward", "siglip.modeling_siglip.SiglipVisionModel"),
                ("TurboGridCLIPVisionModel.turbo_embed", "clip.modeling_clip.CLIPVisionModel"),
                ("TurboGridSiglipVisionModel.turbo_embed", "siglip.modeling_siglip.SiglipVisionModel"),
            )
        ),
        *(
            Override("turbo_hf.modeling.llava_next_kit.TurboPlaceholderMixin.get_placeholder_mask",
                     f"transformers.models.{path}.get_placeholder_mask")
            for path in ("llava_next.modeling_llava_next.LlavaNextModel",
                         "llava_onevision.modeling_llava_onevision.LlavaOnevisionModel",
                         "llava_next_video.modeling_llava_next_video.LlavaNextVideoModel")
        ),
        Override("turbo_hf.modeling.modeling_turbo_llava_next_video.TurboLlavaNextVideoModel.get_video_features",
                 "transformers.models.llava_next_video.modeling_llava_next_video.LlavaNextVideoModel.get_video_features"),
        Override("turbo_hf.modeling.processing_turbo_llava_next_video.TurboLlavaNextVideoProcessor.replace_video_token",
                 "transformers.models.llava_next_video.processing_llava_next_video.LlavaNextVideoProcessor"
                 ".replace_video_token"),
        # the in-LLM reduction of LLaVA-NeXT / OneVision / NeXT-Video: the inner models' wrapper, the Qwen2 decoder
        *(
            Override("turbo_hf.modeling.llava_next_kit.TurboPackedLLMMixin.forward",
                     f"transformers.models.{path}.forward")
            for path in ("llava_next.modeling_llava_next.LlavaNextModel",
                         "llava_onevision.modeling_llava_onevision.LlavaOnevisionModel",
                         "llava_next_video.modeling_llava_next_video.LlavaNextVideoModel")
        ),
        Override("turbo_hf.modeling.llm_decoder_layers.TurboDecoderModelMixin.forward",
                 "transformers.models.qwen2.modeling_qwen2.Qwen2Model.forward"),
        *(
            Override(ours, "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer.forward")
            for ours in ("turbo_hf.modeling.llm_decoder_layers.TurboDecoderLayerMixin.forward",
                         "turbo_hf.modeling.llm_decoders.TurboQwen2DecoderLayer.forward")
        ),
    ]
)

INTERNALS: tuple[Internal, ...] = (
    Internal("transformers.utils.output_capturing._CAN_RECORD_REGISTRY", "turbo_hf.modeling.patching.apply_turbo"),
    Internal("transformers.utils.output_capturing.capture_outputs", "the forwards of the Turbo model classes"),
    Internal("transformers.utils.generic.merge_with_config_defaults", "the forwards of the Turbo model classes"),
    Internal("transformers.conversion_mapping.get_checkpoint_conversion_mapping", "turbo_hf.modeling.registry"),
    Internal("transformers.conversion_mapping.register_checkpoint_conversion_mapping", "turbo_hf.modeling.registry"),
    Internal("transformers.masking_utils.find_first_full_attention_index", "turbo_hf.modeling.llm_token_masks"),
    Internal("transformers.cache_utils.Cache.get_mask_sizes",
             "turbo_hf.modeling.llm_token_masks and turbo_hf.modeling.llm_decoder_layers"),
    Internal("transformers.models.llama.modeling_llama.repeat_kv", "turbo_hf.modeling.llm_token_scores.decoder_layer_scores"),
    Internal("transformers.models.llama.modeling_llama.rotate_half", "turbo_hf.modeling.llm_token_scores.rotary"),
    Internal("transformers.models.bert.modeling_bert.eager_attention_forward", "turbo_hf.modeling.modeling_turbo_bert"),
    Internal("transformers.models.blip_2.modeling_blip_2.eager_attention_forward", "turbo_hf.modeling.modeling_turbo_blip2"),
    Internal("transformers.models.clip.modeling_clip.eager_attention_forward", "turbo_hf.modeling.modeling_turbo_clip"),
    Internal("transformers.models.dinov2.modeling_dinov2.eager_attention_forward", "turbo_hf.modeling.modeling_turbo_dinov2"),
    Internal("transformers.models.instructblip.modeling_instructblip.eager_attention_forward",
             "turbo_hf.modeling.modeling_turbo_instructblip"),
    Internal("transformers.models.siglip.modeling_siglip.eager_attention_forward", "turbo_hf.modeling.modeling_turbo_siglip"),
    Internal("transformers.models.vit.modeling_vit.eager_attention_forward", "turbo_hf.modeling.modeling_turbo_vit"),
    Internal("transformers.configuration_utils.PreTrainedConfig.from_pretrained",
             "turbo_hf.modeling.hub_export._StockCheckpointFilter (the text of the model-type warning it drops)"),
)

OUTPUT_FIELDS: tuple[OutputFields, ...] = (
    OutputFields("transformers.models.llava.modeling_llava.LlavaModelOutputWithPast",
                 ("last_hidden_state", "hidden_states", "attentions"), "turbo_hf.modeling.modeling_turbo_llava.TurboLlavaModel.forward"),
    OutputFields("transformers.modeling_outputs.BaseModelOutputWithPast", ("last_hidden_state", "hidden_states"),
                 "turbo_hf.modeling.llm_decoder_layers.LLMRun.finish"),
    OutputFields("transformers.modeling_outputs.BaseModelOutputWithPooling",
                 ("last_hidden_state", "pooler_output", "hidden_states", "attentions"),
                 "turbo_hf.modeling.turbo_encoder.TurboModelOutputWithPooling"),
    OutputFields("transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions",
                 ("last_hidden_state", "pooler_output"), "turbo_hf.modeling.modeling_turbo_bert.TurboTextModelOutput"),
    OutputFields("transformers.modeling_outputs.ImageClassifierOutput", ("loss", "logits", "hidden_states", "attentions"),
                 "the image-classification heads of DINOv2, CLIP and SigLIP"),
)


def resolve(dotted: str):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"No module in {dotted!r} can be imported.")


def _function(obj):
    obj = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
    obj = getattr(obj, "__func__", obj)  # bound classmethods
    return inspect.unwrap(obj)


def fingerprint(obj) -> str:
    """A short hash of an object's source (comments, blank lines and indentation normalised away); for objects
    without source (a registry dict), of its type name."""
    try:
        source = inspect.getsource(_function(obj))
    except (TypeError, OSError):
        source = type(obj).__qualname__
    lines = (line.strip() for line in source.splitlines())
    normalised = "\n".join(line for line in lines if line and not line.startswith("#"))
    return hashlib.sha256(normalised.encode()).hexdigest()[:16]


def recorded_fingerprints(path: Path = FINGERPRINTS_FILE) -> dict[str, dict[str, str]]:
    """`{upstream name: {transformers version: fingerprint}}` as reviewed."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def _fingerprinted() -> list[tuple[str, str]]:
    """(upstream name, our code to re-check) for everything whose source is fingerprinted."""
    return [(entry.upstream, entry.ours) for entry in OVERRIDES] + [(entry.name, entry.used_by) for entry in INTERNALS]


def check_upstream(recorded: dict | None = None) -> list[str]:
    """What changed in the installed Transformers against the reviewed releases, one message per place to
    re-check (empty when nothing did)."""
    import transformers

    recorded = recorded_fingerprints() if recorded is None else recorded
    problems = []
    for name, ours in _fingerprinted():
        try:
            current = fingerprint(resolve(name))
        except (ImportError, AttributeError):
            problems.append(f"{name} is gone in transformers {transformers.__version__}: re-check {ours}.")
            continue
        known = recorded.get(name, {})
        if current not in known.values():
            problems.append(
                f"{name} changed in transformers {transformers.__version__} (fingerprint {current}, reviewed: "
                f"{', '.join(f'{v} in {k}' for k, v in sorted(known.items())) or 'none'}): re-check {ours}, then "
                "record it with `python -m turbo_hf.testing.upstream --record`."
            )
    for entry in OUTPUT_FIELDS:
        try:
            present = {field.name for field in dataclasses.fields(resolve(entry.output_class))}
        except (ImportError, AttributeError):
            problems.append(f"{entry.output_class} is gone in transformers {transformers.__version__}: re-check {entry.used_by}.")
            continue
        missing = [name for name in entry.fields if name not in present]
        if missing:
            problems.append(
                f"{entry.output_class} has no field(s) {missing} in transformers {transformers.__version__}: "
                f"re-check {entry.used_by}."
            )
    return problems


def record_fingerprints(path: Path = FINGERPRINTS_FILE) -> dict[str, dict[str, str]]:
    """Add the installed release's fingerprints to the recorded ones (after reviewing our copies against it)."""
    import transformers

    recorded = recorded_fingerprints(path)
    for name, _ in _fingerprinted():
        recorded.setdefault(name, {})[transformers.__version__] = fingerprint(resolve(name))
    Path(path).write_text(json.dumps(dict(sorted(recorded.items())), indent=1, sort_keys=True) + "\n")
    return recorded


def discover_overrides() -> set[tuple[str, str]]:
    """Every (Turbo method, stock method) pair where code of `turbo_hf` replaces a method that a Transformers
    base class defines: in a Turbo class itself, or in a `turbo_hf` mixin it inherits (then the pair names the
    mixin). Constructors are left out: they chain to the stock ones."""
    import turbo_hf.modeling

    found = set()
    for info in pkgutil.iter_modules(turbo_hf.modeling.__path__):
        module = importlib.import_module(f"turbo_hf.modeling.{info.name}")
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            stock_bases = [base for base in cls.__mro__[1:] if base.__module__.startswith("transformers.")]
            ours = [base for base in cls.__mro__ if base.__module__.startswith("turbo_hf.")]
            for holder in ours:
                if holder is not cls and any(base.__module__.startswith("transformers.") for base in holder.__mro__):
                    continue  # a Turbo class of its own: reported when it is visited
                for method, value in vars(holder).items():
                    if method.startswith("__") or inspect.isclass(value) or not callable(getattr(value, "__func__", value)):
                        continue
                    owner = next((base for base in stock_bases if method in vars(base)), None)
                    if owner is not None:
                        found.add((
                            f"{holder.__module__}.{holder.__qualname__}.{method}",
                            f"{owner.__module__}.{owner.__qualname__}.{method}",
                        ))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="record the installed release's fingerprints")
    args = parser.parse_args(argv)
    if args.record:
        record_fingerprints()
    problems = check_upstream()
    print("\n".join(problems) if problems else "Every overridden method and internal matches a reviewed release.")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
