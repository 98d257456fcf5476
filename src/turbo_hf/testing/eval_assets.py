"""A tiny local evaluation dataset and tiny random checkpoints (with processors) for every family the evaluation
scripts accept, built offline: what `tests/scripts/test_eval_scripts.py` runs the scripts on.

The dataset (`write_dataset`): eight scikit-image photos at 40 px as a `data.jsonl` (image, label, captions,
question, answers, answer_type) and as an imagefolder of three classes (also with train / test splits).
`write_checkpoint(name, root)` saves one model of `CHECKPOINTS` with its processor / tokenizer (word-level
tokenizers over the dataset's words).
`write_class_folder` writes an imagefolder of many small classes (the stratified `--max-samples` test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# name -> (class, captions, question, answer)
PHOTOS = {
    "astronaut": ("person", ["an astronaut in a white suit", "a woman astronaut next to a flag"], "what color is the suit", "white"),
    "chelsea": ("animal", ["a cat sitting on the floor", "an orange cat looking up"], "what animal is this", "cat"),
    "coffee": ("object", ["a cup of coffee on a plate", "a coffee cup on a saucer"], "what is in the cup", "coffee"),
    "rocket": ("object", ["a rocket on the launch pad", "a white rocket under a blue sky"], "what color is the sky", "blue"),
    "camera": ("person", ["a man with a camera", "a photographer standing on the grass"], "how many men are there", "1"),
    "cat": ("animal", ["a cat lying down", "a cat with green eyes"], "what animal is this", "cat"),
    "hubble_deep_field": ("object", ["galaxies in the deep sky", "many stars and galaxies"], "what is in the sky", "galaxies"),
    "coins": ("object", ["old coins on a table", "many coins in rows"], "how many coins are there", "many"),
}
CLASSES = ["animal", "object", "person"]
WORDS = sorted({word for _, captions, question, answer in PHOTOS.values()
                for text in [*captions, question, answer, "no"] for word in text.split()})
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def write_dataset(root: Path) -> Path:
    """`root/data.jsonl` (+ `root/images/`), the imagefolder `root/folder/<class>/` and the same images as the
    `train` and `test` splits of `root/splits`; returns `root`."""
    import skimage.data as skd
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for name, (label, captions, question, answer) in PHOTOS.items():
        array = np.asarray(getattr(skd, name)())
        array = np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]
        image = Image.fromarray(array.astype(np.uint8)).resize((40, 40))
        image.save(root / "images" / f"{name}.png")
        for folder in (root / "folder", root / "splits" / "train", root / "splits" / "test"):
            (folder / label).mkdir(parents=True, exist_ok=True)
            image.save(folder / label / f"{name}.png")
        records.append({"image": f"images/{name}.png", "label": CLASSES.index(label), "captions": captions,
                        "question": question, "answers": [answer] * 7 + ["no"] * 3,
                        "answer_type": "number" if question.startswith("how many") else "other"})
    (root / "data.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return root


def write_class_folder(root: Path, classes: int, per_class: int, size: int = 8) -> Path:
    """An imagefolder of `classes` classes (`class_00`, ...) with `per_class` random images each."""
    from PIL import Image

    generator = np.random.default_rng(0)
    for index in range(classes):
        folder = Path(root) / f"class_{index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for image in range(per_class):
            pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{image}.png")
    return Path(root)


def word_tokenizer(size: int, fixed: dict[int, str], template: tuple[str, str] | None = None,
                   image_token: bool = False, **special_tokens):
    """A whitespace word-level fast tokenizer of `size` entries: the tokens of `fixed` at their ids, the dataset's
    words in the other ids (then fillers `w<id>`); `template` (first, last) wraps every text; `special_tokens`
    (`pad_token="<pad>"`, ...) as `PreTrainedTokenizerFast` takes them (`unk_token` defaults to the token of the
    lowest fixed id); with `image_token`, `<image>` is its `image_token` (as LLaVA's tokenizers have it; BLIP-2's
    processors add `<image>` themselves)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    free = iter([word for word in WORDS if word not in fixed.values()])
    vocab = {fixed[i] if i in fixed else next(free, f"w{i}"): i for i in range(size)}
    unknown = special_tokens.setdefault("unk_token", fixed[min(fixed)])
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unknown))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template is not None:
        first, last = template
        backend.post_processor = processors.TemplateProcessing(
            single=f"{first} $A {last}", special_tokens=[(first, vocab[first]), (last, vocab[last])])
    extra = {"extra_special_tokens": {"image_token": "<image>"}} if image_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens, **extra)


def _bert_style(size: int, **fixed: int):
    """[PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3 (+ `fixed`: token -> id), texts as `[CLS] ... [SEP]`."""
    tokens = {0: "[PAD]", 1: "[UNK]", 2: "[CLS]", 3: "[SEP]", **{i: t for t, i in fixed.items()}}
    return word_tokenizer(size, tokens, ("[CLS]", "[SEP]"), unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                          sep_token="[SEP]")


def _opt_tokenizer():
    """For `tiny_models.OPT_TEXT`: pad 1, bos = eos 2, `<image>` at `BLIP2_IMAGE_TOKEN`."""
    from .tiny_models import BLIP2_IMAGE_TOKEN, OPT_TEXT

    return word_tokenizer(OPT_TEXT["vocab_size"], {0: "<unk>", 1: "<pad>", 2: "</s>", BLIP2_IMAGE_TOKEN: "<image>"},
                          pad_token="<pad>", bos_token="</s>", eos_token="</s>")


def _blip_image_processor():
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": 32, "width": 32})


def _clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _save(folder: Path, model, *processors) -> Path:
    model.save_pretrained(folder)
    for processor in processors:
        processor.save_pretrained(folder)
    return folder


def _vit(folder):
    from transformers import ViTForImageClassification, ViTImageProcessor

    from .tiny_models import vit_config

    labels = dict(enumerate(CLASSES))
    config = vit_config(num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = ViTForImageClassification(config)
    return _save(folder, model, ViTImageProcessor(size={"height": 32, "width": 32}))


def _dinov2(folder):  # no image processor: the scripts' resize + centre crop + ImageNet normalisation
    from transformers import Dinov2Model

    from .tiny_models import dinov2_config

    return _save(folder, Dinov2Model(dinov2_config()))


def _clip(folder):
    from transformers import CLIPModel

    from .tiny_models import clip_config

    tokenizer = word_tokenizer(99, {0: "<unk>", 1: "<pad>", 97: "<s>", 98: "</s>"}, ("<s>", "</s>"),
                               pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    return _save(folder, CLIPModel(clip_config()), tokenizer, _clip_image_processor())


def _siglip(folder):
    from transformers import SiglipImageProcessor, SiglipModel

    from .tiny_models import siglip_config

    tokenizer = word_tokenizer(99, {0: "<unk>", 1: "<pad>"}, pad_token="<pad>")
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return _save(folder, SiglipModel(siglip_config()), tokenizer, image_processor)


def _clip_vision(folder):
    from transformers import CLIPVisionModel

    from .tiny_models import clip_vision_config

    return _save(folder, CLIPVisionModel(clip_vision_config()), _clip_image_processor())


def _siglip_vision(folder):
    from transformers import SiglipImageProcessor, SiglipVisionModel

    from .tiny_models import siglip_vision_config

    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return _save(folder, SiglipVisionModel(siglip_vision_config()), image_processor)


def _convnext(folder):  # a family Turbo does not support (classification evaluates it with --modes none)
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                            image_size=32)
    return _save(folder, ConvNextForImageClassification(config))


def _blip(model_class):
    def write(folder):
        from transformers import BertTokenizer, BlipConfig, BlipProcessor

        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + WORDS
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]")
        text = dict(vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0, **TOWER)
        config = BlipConfig(text_config={**text, "bos_token_id": 5, "sep_token_id": 3, "eos_token_id": 3},
                            vision_config=dict(image_size=32, patch_size=4, **TOWER), projection_dim=16,
                            image_text_hidden_size=16)
        processor = BlipProcessor(image_processor=_blip_image_processor(), tokenizer=tokenizer)
        return _save(folder, model_class(config), processor)

    return write


def _blip2(folder):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from .tiny_models import QUERIES, blip2_config, large_weights

    processor = Blip2Processor(image_processor=_blip_image_processor(), tokenizer=_opt_tokenizer(),
                               num_query_tokens=QUERIES)
    return _save(folder, large_weights(Blip2ForConditionalGeneration(blip2_config())), processor)


def _blip2_itm(folder):
    from transformers import Blip2ForImageTextRetrieval

    from .tiny_models import BLIP2_IMAGE_TOKEN, blip2_config, large_weights

    model = large_weights(Blip2ForImageTextRetrieval(blip2_config(qformer_text=True)))
    return _save(folder, model, _bert_style(99, **{"<image>": BLIP2_IMAGE_TOKEN}), _blip_image_processor())


def _instructblip(folder):
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    from .tiny_models import QUERIES, instructblip_config, large_weights

    processor = InstructBlipProcessor(image_processor=_blip_image_processor(), tokenizer=_opt_tokenizer(),
                                      qformer_tokenizer=_bert_style(50), num_query_tokens=QUERIES)
    return _save(folder, large_weights(InstructBlipForConditionalGeneration(instructblip_config())), processor)


def _llava(folder):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from .tiny_models import LLAVA_IMAGE_TOKEN, PATCH, large_weights, llava_config

    tokenizer = word_tokenizer(120, {0: "<unk>", 1: "<pad>", 2: "<s>", 3: "</s>", LLAVA_IMAGE_TOKEN: "<image>"},
                               image_token=True, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    processor = LlavaProcessor(image_processor=_clip_image_processor(), tokenizer=tokenizer, patch_size=PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return _save(folder, large_weights(LlavaForConditionalGeneration(llava_config())), processor)


def _blip_classes():
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering

    return {"blip_caption": BlipForConditionalGeneration, "blip_vqa": BlipForQuestionAnswering,
            "blip_itm": BlipForImageTextRetrieval}


CHECKPOINTS = {"vit": _vit, "dinov2": _dinov2, "clip": _clip, "siglip": _siglip, "clip_vision": _clip_vision,
               "siglip_vision": _siglip_vision, "convnext": _convnext,
               "blip2": _blip2, "blip2_itm": _blip2_itm, "instructblip": _instructblip, "llava": _llava,
               **{name: None for name in ("blip_caption", "blip_vqa", "blip_itm")}}


def write_checkpoint(name: str, root: Path, seed: int = 0) -> Path:
    """Save the tiny checkpoint `name` (a key of `CHECKPOINTS`) with its processor into `root/name`."""
    if name not in CHECKPOINTS:
        raise ValueError(f"Unknown checkpoint {name!r}: choose from {', '.join(CHECKPOINTS)}.")
    writer = CHECKPOINTS[name] or _blip(_blip_classes()[name])
    torch.manual_seed(seed)
    return writer(Path(root) / name)


__all__ = ["CHECKPOINTS", "CLASSES", "PHOTOS", "WORDS", "word_tokenizer", "write_checkpoint", "write_class_folder",
           "write_dataset"]
