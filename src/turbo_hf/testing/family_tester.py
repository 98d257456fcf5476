"""One table of tiny cases, one per supported family and head, for the checks every family owes
(`tests/modeling/test_families.py`), in the spirit of Transformers' `ModelTesterMixin`.

A case builds its stock model, feeds it a batch without padding (the family files test padding) and reads the
tensors a user reads from it, one row per sample. It names its public Turbo class and the Auto class that
loads a saved Turbo folder, and whether its token order carries meaning (`token_order="tome"` refused).

The in-LLM cases (LLaVA-1.5/NeXT/OneVision `-llm`, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) reduce image tokens inside the
language model (`llm_layers`, `llm_keep`); where the family takes images of several sizes, their batches hold
images of different token counts per row (`family_inputs`). The Qwen-VL ones merge nothing in their tower (`r`
refused) and split their batches with `family_inputs.split_qwen`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from torch import nn
from transformers.utils import ModelOutput

from . import family_inputs, tiny_models
from ..modeling.configuration_turbo import TurboConfig
from ..modeling.llava_token_counts import image_token_count
from ..modeling.modeling_turbo_llava_next_video import stock_video_tokens
from ..modeling.video_token_merging import video_token_count


Inputs = dict[str, object]
GENERATED = 3  # new tokens of the greedy `generate()` checks


def split(inputs: Inputs) -> list[Inputs]:
    """The batch as one-sample batches (tensors sliced on dim 0, other arguments kept)."""
    batch = next(v.shape[0] for v in inputs.values() if torch.is_tensor(v))
    return [{k: v[i : i + 1] if torch.is_tensor(v) else v for k, v in inputs.items()} for i in range(batch)]


@dataclass(frozen=True)
class FamilyCase:
    """One family/head on a tiny random model.

    Attributes:
        name: the case id.
        stock_class: the stock Transformers class (by name).
        make_config: the tiny config factory.
        make_inputs: `(batch, model, turbo_config) -> inputs`; the config matters where the input length
            depends on the merging (LLaVA's image placeholders).
        rows: `(model, inputs) -> (batch, n)` tensor: what a user reads, one row per sample.
        merging: settings that remove tokens in every case (checked: the output changes); with `llm_layers`, the
            image tokens are reduced inside the language model (an in-LLM case).
        turbo_class: the public Turbo class (by name in `turbo_hf`), for the Hub round trip; None if none.
        auto_class: the Auto class a saved Turbo folder loads with; None: `turbo_class.from_pretrained`.
        spatial_only: `token_order="tome"` is refused (the token order carries meaning downstream).
        large_weights: re-draw the weights large (BLIP-2's queries barely move the outputs otherwise).
        unlike_stock: output fields (path prefixes) that differ from stock at r=0 by design, with the reason.
        split_batch: `inputs -> one-sample inputs`, in row order (Qwen-VL's flat image tensors need their own).
        tower_merging: `r` merges tokens in a tower of the family (False: only the in-LLM reduction; `r` refused).
        keep_all: for the in-LLM cases (`llm_layers` in `merging`), `model -> int`: the most tokens of one image of
            the case's inputs, so the `llm_keep` count that runs the reduction's wrappers yet removes nothing.
    """

    name: str
    stock_class: str
    make_config: Callable[[], transformers.PretrainedConfig]
    make_inputs: Callable[[int, nn.Module, TurboConfig | None], Inputs]
    rows: Callable[[nn.Module, Inputs], torch.Tensor]
    merging: dict = field(default_factory=lambda: {"r": 6})
    turbo_class: str | None = None
    auto_class: str | None = "AutoModel"
    spatial_only: bool = False
    large_weights: bool = False
    unlike_stock: dict[str, str] = field(default_factory=dict)
    split_batch: Callable[[Inputs], list[Inputs]] = split
    tower_merging: bool = True
    keep_all: Callable[[nn.Module], int] | None = None

    def __repr__(self) -> str:
        return self.name

    @property
    def in_llm(self) -> bool:
        """Whether the case's reducing settings reduce image tokens inside the language model (`llm_layers`)."""
        return "llm_layers" in self.merging

    def removing_nothing(self, model: nn.Module) -> list[TurboConfig]:
        """Settings that must give the stock outputs bit for bit: r=0, and for in-LLM cases a reduction at the case's
        first `llm_layers` layer that keeps every token of every image (its wrappers run, nothing is removed)."""
        if not self.in_llm:
            return [TurboConfig(r=0)]
        layer = TurboConfig(**self.merging).llm_layers[0]
        return [TurboConfig(r=0), TurboConfig(llm_layers=[layer], llm_keep=[self.keep_all(model)])]

    @property
    def supports_sdpa(self) -> bool:
        """Whether the stock class runs with SDPA (else the eager/SDPA check does not apply to it)."""
        return bool(getattr(transformers, self.stock_class)._supports_sdpa)

    def build(self, attn: str = "sdpa", seed: int = 0) -> nn.Module:
        """The stock model with random weights, in eval mode (eager where stock has no SDPA)."""
        attn = attn if self.supports_sdpa else "eager"
        torch.manual_seed(seed)
        model = getattr(transformers, self.stock_class)(tiny_models.set_attention(self.make_config(), attn))
        return tiny_models.large_weights(model, seed) if self.large_weights else model.eval()

    def inputs(self, model: nn.Module, batch: int = 2, turbo: TurboConfig | None = None) -> Inputs:
        return self.make_inputs(batch, model, turbo)

    def run(self, model: nn.Module, inputs: Inputs) -> ModelOutput:
        """The model's whole output (a `ModelOutput`)."""
        with torch.no_grad():
            return model(**inputs)

    def stock_fields(self, output: ModelOutput) -> dict[str, torch.Tensor]:
        """Every tensor of the output that must equal the stock model's at r=0."""
        return {k: v for k, v in tensors(output).items() if not any(k.startswith(p) for p in self.unlike_stock)}

    def read(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        with torch.no_grad():
            return self.rows(model, inputs)

    def generate(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        """The `GENERATED` new ids of greedy `generate()` (no early stop: every row gets them all)."""
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=GENERATED, min_new_tokens=GENERATED, do_sample=False)
        return out[:, inputs["input_ids"].shape[1] :]


def tensors(output: ModelOutput | tuple | list, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) model output, by field path."""
    found = {}
    items = output.items() if isinstance(output, ModelOutput) else enumerate(output)
    for key, value in items:
        path = f"{prefix}{key}"
        if torch.is_tensor(value):
            found[path] = value
        elif isinstance(value, (ModelOutput, tuple, list)):
            found.update(tensors(value, path + "."))
    return found


# -------------------------------------------------------------------------------------------------- inputs


def _pixels(batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, generator=generator)


def _ids(batch: int, length: int, low: int = 3, high: int = 90, seed: int = 2) -> torch.Tensor:
    return torch.randint(low, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def _vision(name: str) -> Callable:
    return lambda batch, model, turbo: tiny_models.inputs(name, batch=batch)


def _clip_text(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    ids = _ids(batch, 16)
    ids[:, -1] = tiny_models.CLIP_TEXT["eos_token_id"]
    return {"input_ids": ids}


def _siglip_text(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    return {"input_ids": _ids(batch, 16)}


def _bert(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    ids = _ids(batch, 24, low=5, high=99)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS], [SEP]
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    return {"input_ids": ids, "token_type_ids": types}


def _blip_text(batch: int, length: int = 6, seed: int = 2) -> torch.Tensor:
    ids = _ids(batch, length, seed=seed)
    ids[:, -1] = tiny_models.BLIP_SPECIAL["sep_token_id"]
    return ids


def _blip(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    return {"pixel_values": _pixels(batch), "input_ids": _blip_text(batch)}


def _blip_vqa(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    answer = _blip_text(batch, 3, seed=3)
    answer[:, 0] = tiny_models.BLIP_SPECIAL["bos_token_id"]
    return dict(_blip(batch, model, turbo), decoder_input_ids=answer)


def _blip2_prompt(batch: int, length: int = 3) -> torch.Tensor:
    prefix = torch.tensor([[tiny_models.BLIP2_IMAGE_TOKEN] * tiny_models.QUERIES + [2]] * batch)  # + <bos>
    return torch.cat([prefix, _ids(batch, length)], dim=1)


def _blip2(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    return {"pixel_values": _pixels(batch), "input_ids": _blip2_prompt(batch)}


def _blip2_retrieval(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    return dict(_blip2(batch, model, turbo), use_image_text_matching_head=True)


def _instructblip(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    return dict(_blip2(batch, model, turbo), qformer_input_ids=_ids(batch, 4, low=1, high=50, seed=5))


def _llava(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    count = image_token_count(model.config, turbo)
    image = torch.tensor([[2] + [tiny_models.LLAVA_IMAGE_TOKEN] * count] * batch)  # <s> + placeholders
    return {"pixel_values": _pixels(batch), "input_ids": torch.cat([image, _ids(batch, 5, 10, 100)], dim=1)}


NEXT_IMAGE_SIZE = (32, 64)  # two anyres tiles and the base image


def _next_images(batch: int, model: nn.Module) -> Inputs:
    """LLaVA-NeXT-style images: the crops of each image and its size, with the stock placeholder count (Turbo keeps
    it: the tower gives the full grid back)."""
    config = model.config
    crops = 1 + (NEXT_IMAGE_SIZE[0] // tiny_models.IMAGE_SIZE) * (NEXT_IMAGE_SIZE[1] // tiny_models.IMAGE_SIZE)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, crops, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, generator=generator)
    sizes = torch.tensor([NEXT_IMAGE_SIZE] * batch)
    with torch.no_grad():
        count = next(m for m in model.modules() if hasattr(m, "pack_image_features")).get_image_features(
            pixels[:1], sizes[:1]).pooler_output[0].shape[0]
    image = torch.tensor([[2] + [config.image_token_id] * count] * batch)
    return {"pixel_values": pixels, "image_sizes": sizes, "input_ids": torch.cat([image, _ids(batch, 5, 10, 100)], 1)}


def _llava_next(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    return _next_images(batch, model)


def _llava_next_video(batch: int, model: nn.Module, turbo: TurboConfig | None) -> Inputs:
    frames = 4
    videos = torch.randn(batch, frames, 3, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE,
                         generator=torch.Generator().manual_seed(3))
    count = video_token_count(stock_video_tokens(model.config, frames), (turbo or TurboConfig()).video_keep)
    video = torch.tensor([[2] + [tiny_models.LLAVA_VIDEO_TOKEN] * count] * batch)
    return {"pixel_values_videos": videos, "input_ids": torch.cat([video, _ids(batch, 5, 10, 100)], dim=1)}


# ---------------------------------------------------------------------------------------------------- rows


def _flat(*fields: str) -> Callable:
    """Rows made of output fields (each flattened per sample)."""

    def rows(model: nn.Module, inputs: Inputs) -> torch.Tensor:
        out = model(**inputs)
        return torch.cat([getattr(out, f).flatten(1) for f in fields], dim=1)

    return rows


def _vision_rows(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    out = model(**inputs)
    fields = [out.last_hidden_state] + ([] if out.pooler_output is None else [out.pooler_output])
    return torch.cat([field.flatten(1) for field in fields], dim=1)


LLAVA_IMAGE_OUTPUTS = {
    "image_outputs.": "Transformers 5.24 returns the vision tower's outputs: the Turbo tower stops at the feature "
    "layer, so its last_hidden_state is layer -2's and it returns no hidden_states unless asked "
    "(tests/modeling/test_contracts.py checks them when asked)"
}
HEAD_ROWS = {"cls": _flat("logits"), "proj": _flat("image_embeds")}
VISION_HEADS = {
    "vit": ("ViTModel", "TurboViTModel", "AutoModel"),
    "vit-cls": ("ViTForImageClassification", "TurboViTForImageClassification", "AutoModelForImageClassification"),
    "dinov2": ("Dinov2Model", "TurboDinov2Model", "AutoModel"),
    "dinov2-cls": ("Dinov2ForImageClassification", "TurboDinov2ForImageClassification",
                   "AutoModelForImageClassification"),
    "clip-vision": ("CLIPVisionModel", "TurboCLIPVisionModel", "AutoModel"),
    "clip-vision-proj": ("CLIPVisionModelWithProjection", "TurboCLIPVisionModelWithProjection", None),
    "clip-cls": ("CLIPForImageClassification", "TurboCLIPForImageClassification", "AutoModelForImageClassification"),
    "siglip-vision": ("SiglipVisionModel", "TurboSiglipVisionModel", "AutoModel"),
    "siglip-cls": ("SiglipForImageClassification", "TurboSiglipForImageClassification",
                   "AutoModelForImageClassification"),
}

CASES = [
    *[
        FamilyCase(name, stock, tiny_models.FAMILIES[name][1], _vision(name),
                   HEAD_ROWS.get(name.rsplit("-", 1)[-1], _vision_rows),
                   turbo_class=turbo, auto_class=auto)
        for name, (stock, turbo, auto) in VISION_HEADS.items()
    ],
    FamilyCase("clip", "CLIPModel", tiny_models.clip_config, _vision("clip"), _flat("image_embeds", "text_embeds"),
               turbo_class="TurboCLIPModel"),
    FamilyCase("siglip", "SiglipModel", tiny_models.siglip_config, _vision("siglip"),
               _flat("image_embeds", "text_embeds"), turbo_class="TurboSiglipModel"),
    FamilyCase("clip-text", "CLIPTextModel", tiny_models.clip_text_config, _clip_text, _flat("pooler_output"),
               merging={"r": 2}, spatial_only=True),
    FamilyCase("siglip-text", "SiglipTextModel", tiny_models.siglip_text_config, _siglip_text,
               _flat("pooler_output"), merging={"r": 2}, spatial_only=True),
    FamilyCase("bert", "BertModel", tiny_models.bert_config, _bert, _flat("pooler_output"), merging={"r": 3},
               turbo_class="TurboBertModel", spatial_only=True),
    FamilyCase("blip-caption", "BlipForConditionalGeneration", tiny_models.blip_config, _blip, _flat("logits"),
               turbo_class="TurboBlipForConditionalGeneration", auto_class="AutoModelForImageTextToText"),
    FamilyCase("blip-itm", "BlipForImageTextRetrieval", tiny_models.blip_config, _blip, _flat("itm_score"),
               turbo_class="TurboBlipForImageTextRetrieval", auto_class=None),
    # without labels, VQA's forward returns the question encoded with the image (the answer decoder: generate)
    FamilyCase("blip-vqa", "BlipForQuestionAnswering", tiny_models.blip_config, _blip_vqa,
               _flat("last_hidden_state"),
               turbo_class="TurboBlipForQuestionAnswering", auto_class="AutoModelForVisualQuestionAnswering"),
    FamilyCase("blip-model", "BlipModel", tiny_models.blip_config, _blip, _flat("image_embeds", "text_embeds"),
               turbo_class="TurboBlipModel"),
    FamilyCase("blip-vision", "BlipVisionModel", tiny_models.blip_vision_config, _vision("vit"),
               _flat("last_hidden_state", "pooler_output"), turbo_class="TurboBlipVisionModel"),
    FamilyCase("blip2", "Blip2ForConditionalGeneration", tiny_models.blip2_config, _blip2, _flat("logits"),
               merging={"r": [8, 4]}, turbo_class="TurboBlip2ForConditionalGeneration",
               auto_class="AutoModelForImageTextToText", large_weights=True),
    FamilyCase("blip2-retrieval", "Blip2ForImageTextRetrieval", lambda: tiny_models.blip2_config(qformer_text=True),
               _blip2_retrieval, _flat("logits_per_image"), merging={"r": [8, 4]},
               turbo_class="TurboBlip2ForImageTextRetrieval", auto_class="AutoModelForZeroShotImageClassification",
               large_weights=True),
    FamilyCase("instructblip", "InstructBlipForConditionalGeneration", tiny_models.instructblip_config,
               _instructblip, _flat("logits"), merging={"r": [8, 4]},
               turbo_class="TurboInstructBlipForConditionalGeneration", auto_class="AutoModelForImageTextToText",
               large_weights=True),
    FamilyCase("llava", "LlavaForConditionalGeneration", tiny_models.llava_config, _llava, _flat("logits"),
               merging={"r": 8}, turbo_class="TurboLlavaForConditionalGeneration",
               auto_class="AutoModelForImageTextToText", spatial_only=True,
               unlike_stock=LLAVA_IMAGE_OUTPUTS),
    FamilyCase("llava-model", "LlavaModel", tiny_models.llava_config, _llava, _flat("last_hidden_state"),
               merging={"r": 8}, turbo_class="TurboLlavaModel", spatial_only=True, unlike_stock=LLAVA_IMAGE_OUTPUTS),
]
CASES += [  # Turbo in the tower, the full grid given back: the stock counts and processors
    FamilyCase("llava-next", "LlavaNextForConditionalGeneration", tiny_models.llava_next_config, _llava_next,
               _flat("logits"), merging={"r": 8}, turbo_class="TurboLlavaNextForConditionalGeneration",
               auto_class="AutoModelForImageTextToText"),
    FamilyCase("llava-onevision", "LlavaOnevisionForConditionalGeneration", tiny_models.llava_onevision_config,
               _llava_next, _flat("logits"), merging={"r": 8}, turbo_class="TurboLlavaOnevisionForConditionalGeneration",
               auto_class="AutoModelForImageTextToText"),
    FamilyCase("llava-next-video", "LlavaNextVideoForConditionalGeneration", tiny_models.llava_next_video_config,
               _llava_next_video, _flat("logits"), merging={"r": 8, "video_keep": 0.25},
               turbo_class="TurboLlavaNextVideoForConditionalGeneration", auto_class="AutoModelForImageTextToText"),
]
NEXT_LLM = dict(make_inputs=family_inputs.next_batch, rows=_flat("logits"), auto_class="AutoModelForImageTextToText",
                keep_all=family_inputs.most_next_tokens)
QWEN = dict(make_inputs=family_inputs.qwen_batch, rows=_flat("logits"), auto_class="AutoModelForImageTextToText",
            spatial_only=True, split_batch=family_inputs.split_qwen, tower_merging=False,
            keep_all=lambda model: family_inputs.most_qwen_tokens())
CASES += [  # image tokens reduced inside the language model (`llm_layers`, `llm_keep`: a count or a share per image)
    FamilyCase("llava-llm", "LlavaForConditionalGeneration", tiny_models.llava_config, _llava, _flat("logits"),
               merging={"llm_layers": [1], "llm_keep": [16]}, turbo_class="TurboLlavaForConditionalGeneration",
               auto_class="AutoModelForImageTextToText", spatial_only=True, unlike_stock=LLAVA_IMAGE_OUTPUTS,
               keep_all=lambda model: image_token_count(model.config, TurboConfig())),
    FamilyCase("llava-next-llm", "LlavaNextForConditionalGeneration", tiny_models.llava_next_config,
               merging={"llm_layers": [1], "llm_keep": [0.5]}, turbo_class="TurboLlavaNextForConditionalGeneration",
               **NEXT_LLM),
    FamilyCase("llava-onevision-llm", "LlavaOnevisionForConditionalGeneration", tiny_models.llava_onevision_config,
               merging={"llm_layers": [1], "llm_keep": [40]},
               turbo_class="TurboLlavaOnevisionForConditionalGeneration", **NEXT_LLM),
    # each video's frames merged jointly before the language model, then reduced inside it as one item
    FamilyCase("llava-next-video-llm", "LlavaNextVideoForConditionalGeneration", tiny_models.llava_next_video_config,
               _llava_next_video, _flat("logits"), merging={"video_keep": 0.5, "llm_layers": [1], "llm_keep": [0.5]},
               turbo_class="TurboLlavaNextVideoForConditionalGeneration", auto_class="AutoModelForImageTextToText",
               keep_all=lambda model: stock_video_tokens(model.config, 4)),
    # Qwen-VL: only the in-LLM reduction; rows of different image grids (`family_inputs.QWEN_ROWS`)
    FamilyCase("qwen2-vl", "Qwen2VLForConditionalGeneration", tiny_models.qwen2_vl_config,
               merging={"llm_layers": [1, 3], "llm_keep": [0.5, 0.25]},
               turbo_class="TurboQwen2VLForConditionalGeneration", **QWEN),
    FamilyCase("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", tiny_models.qwen2_5_vl_config,
               merging={"llm_layers": [2], "llm_keep": [3]}, turbo_class="TurboQwen2_5_VLForConditionalGeneration",
               **QWEN),
    # Qwen3-VL adds deepstack features after decoder layers 0 and 1 (`deepstack_visual_indexes=[0, 1]`): reductions
    # from layer 2 on
    FamilyCase("qwen3-vl", "Qwen3VLForConditionalGeneration", tiny_models.qwen3_vl_deepstack_config,
               merging={"llm_layers": [2], "llm_keep": [0.5]}, turbo_class="TurboQwen3VLForConditionalGeneration",
               **QWEN),
]
BY_NAME = {case.name: case for case in CASES}
