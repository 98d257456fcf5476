"""Shared machinery of the evaluation scripts (`scripts/eval_*.py`) and of `turbo-hf bench`.

- Settings: the modes compared in one run (`stock`, `random`, `tome`, `semantic`, `turbo`) at several `r`,
  with the other Turbo settings from a preset (`configs/`).
- `Runner`: data parallelism with Accelerate (whole global batches dealt out to processes, so batch
  composition and results do not depend on the number of processes; per-sample results gathered to every
  process; only the main process writes). One process on CPU needs no launcher.
- Data through `datasets`: a Hub dataset name, a local `imagefolder` directory, or a JSON-lines file of
  image paths with captions / questions / labels.
- Measurement: warm-up, interleaved rounds, medians, synchronisation on GPU, throughput, latency, peak
  memory (CUDA allocator or process RSS), FLOPs counted with `torch.utils.flop_counter`.
- Output: a JSON file (results + machine, library versions, settings), a markdown table and a plot of
  quality against measured speed-up with one line per mode.

Heavy optional libraries (accelerate, datasets, matplotlib) are imported where they are used.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .configuration_turbo import TurboConfig
from .merging import unmerge
from .patching import apply_turbo, is_turbo_applied, remove_turbo, turbo_plan

# ------------------------------------------------------------------------------------------- settings

MODE_ALIASES = {"none": "stock", "stock": "stock", "random": "random", "tome": "tome", "semantic": "semantic", "turbo": "turbo"}
MODE_ORDER = ("stock", "random", "tome", "semantic", "turbo")
MODE_LABELS = {"stock": "stock", "random": "random", "tome": "ToMe", "semantic": "semantic only", "turbo": "Turbo"}
MODE_STYLES = {  # colour, marker
    "stock": ("black", "*"),
    "random": ("tab:gray", "x"),
    "tome": ("tab:blue", "o"),
    "semantic": ("tab:orange", "s"),
    "turbo": ("tab:red", "D"),
}


class UsageError(ValueError):
    """A bad argument or input: scripts print the message and exit with code 2."""


def parse_modes(text: str | Sequence[str]) -> list[str]:
    """Comma-separated modes -> canonical names (`none` and `stock` both mean the unmodified model).

    Example:

    ```python
    >>> from turbo_hf.evaluation import parse_modes
    >>> parse_modes("none,tome,turbo")
    ['stock', 'tome', 'turbo']
    ```
    """
    words = [w.strip().lower() for w in (text.split(",") if isinstance(text, str) else text) if w.strip()]
    if not words:
        raise UsageError("No mode given: use some of " + ", ".join(MODE_ALIASES) + ".")
    modes = []
    for word in words:
        if word not in MODE_ALIASES:
            raise UsageError(f"Unknown mode {word!r}: choose from {', '.join(MODE_ALIASES)}.")
        if MODE_ALIASES[word] not in modes:
            modes.append(MODE_ALIASES[word])
    return modes


def parse_ints(text: str, name: str = "--r") -> list[int]:
    """Comma-separated non-negative integers (`"0,16,30"`)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(f"{name} takes comma-separated integers, got {text!r}.") from error
    if not values or any(v < 0 for v in values):
        raise UsageError(f"{name} takes comma-separated non-negative integers, got {text!r}.")
    return values


@dataclass
class Setting:
    """One evaluated configuration: the stock model, or a Turbo mode at some `r`."""

    name: str
    mode: str
    r: int | list[int]
    config: TurboConfig | None

    def summary(self) -> dict:
        return {"name": self.name, "mode": self.mode, "r": self.r,
                "turbo_config": self.config.settings() if self.config is not None else None}


def preset_base(preset: str | None) -> tuple[dict, int | list[int] | None]:
    """(Turbo settings without the budget, the preset's `r`) of a preset name or JSON path; ({}, None) for None."""
    if not preset:
        return {}, None
    from .presets import load_preset

    try:
        settings = dict(load_preset(preset)["turbo_config"])
    except ValueError as error:
        raise UsageError(str(error)) from error
    r = settings.pop("r", None)
    settings.pop("flops_ratio", None)
    return settings, r


def build_settings(
    modes: Sequence[str], r_values: Sequence[int | list[int]], base: dict | None = None
) -> list[Setting]:
    """The stock model first (always: it is the speed and quality reference), then every mode at every r > 0.

    `base` holds the other Turbo settings (a preset's); `mode` and `r` are set per setting, and modes other
    than `turbo` keep them too (alpha is unused by `tome`, `semantic` and `random`).

    Example:

    ```python
    >>> from turbo_hf.evaluation import build_settings
    >>> [s.name for s in build_settings(["stock", "tome", "turbo"], [0, 8])]
    ['stock', 'tome r=8', 'turbo r=8']
    ```
    """
    base = {k: v for k, v in (base or {}).items() if k not in ("r", "flops_ratio", "mode")}
    settings = [Setting("stock", "stock", 0, None)]
    for mode in sorted(set(modes) - {"stock"}, key=MODE_ORDER.index):
        for r in r_values:
            if r == 0 or (isinstance(r, list) and not any(r)):
                continue
            label = r if isinstance(r, int) else "preset"
            try:
                config = TurboConfig(**{**base, "mode": mode, "r": r})
            except ValueError as error:
                raise UsageError(f"Invalid Turbo settings: {error}") from error
            settings.append(Setting(f"{mode} r={label}", mode, r, config))
    return settings


def use_setting(model: nn.Module, setting: Setting) -> nn.Module:
    """Put the model in a setting: `apply_turbo` with its config, or the stock model."""
    if setting.config is None:
        if is_turbo_applied(model):
            remove_turbo(model)
    else:
        apply_turbo(model, setting.config)
    return model


def check_settings(model: nn.Module, settings: Sequence[Setting]) -> None:
    """Apply every setting once so an unsupported model or an impossible `r` fails before any work."""
    try:
        for setting in settings:
            use_setting(model, setting)
    except ValueError as error:
        raise UsageError(str(error)) from error
    finally:
        if is_turbo_applied(model):
            remove_turbo(model)


def vision_patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int, bool]:
    """(rows, cols, has [CLS]) of the patch grid a patched model's vision encoder sees for these pixels."""
    patch = getattr(model, "_turbo_patch", None)
    if patch is None:
        raise ValueError("The model is not patched: call `apply_turbo` first.")
    size = patch.vision_models[0].config.patch_size
    size = size if isinstance(size, (list, tuple)) else (size, size)
    return pixel_values.shape[-2] // size[0], pixel_values.shape[-1] // size[1], patch.adapter.protect_first


def setting_plan(model: nn.Module, setting: Setting, pixel_values: torch.Tensor | None) -> dict:
    """Token counts and the FLOP fraction (of the vision encoder) of a setting for these pixel values."""
    if setting.config is None:
        return {"token_counts": None, "final_tokens": None, "flops_fraction": 1.0, "flops_speed_limit": 1.0}
    apply_turbo(model, setting.config)
    try:
        num_tokens = None
        if pixel_values is not None:
            rows, cols, has_cls = vision_patch_grid(model, pixel_values)
            num_tokens = rows * cols + int(has_cls)
        plan = turbo_plan(model, num_tokens)
    finally:
        remove_turbo(model)
    return {
        "token_counts": plan["token_counts"],
        "final_tokens": plan["token_counts"][-1],
        "flops_fraction": plan["flops_fraction"],
        "flops_speed_limit": 1.0 / plan["flops_fraction"],
    }


# --------------------------------------------------------------------------------------------- runner


def shard_batches(indices: Sequence[int] | int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Global batches of `batch_size` consecutive indices, dealt round-robin: process `rank` of `world` gets
    batches rank, rank + world, ... Each sample lands in the same batch whatever `world` is.

    Example:

    ```python
    >>> from turbo_hf.evaluation import shard_batches
    >>> shard_batches(5, 2, rank=1, world=2)
    [[2, 3]]
    ```
    """
    if batch_size < 1:
        raise UsageError(f"The batch size must be >= 1, got {batch_size}.")
    indices = list(range(indices) if isinstance(indices, int) else indices)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return batches[rank::world]


class Runner:
    """Data-parallel evaluation with Accelerate.

    Every process runs the same settings in the same order. Samples are cut into global batches of
    `batch_size` (in dataset order) and batch `i` goes to process `i % num_processes`, so each sample is
    computed in the same batch whatever the number of processes; `gather` returns every process's records
    to every process. Without a launcher this is one process (on CUDA when available, else CPU).

    `accelerate launch --multi_gpu --num_processes 2 ...` also works on a CPU-only machine (two processes
    over gloo): the runner asks Accelerate for CPU whenever CUDA is absent.
    """

    def __init__(self, cpu: bool = False) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available())

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    def batches(self, indices: Sequence[int] | int, batch_size: int) -> list[list[int]]:
        """This process's share of the global batches of `indices` (or of `range(indices)`)."""
        return shard_batches(indices, batch_size, self.process_index, self.num_processes)

    def gather(self, records: list) -> list:
        """Every process's records (python objects), concatenated in process order."""
        if self.num_processes == 1:
            return list(records)
        from accelerate.utils import gather_object

        return gather_object(list(records))

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def main_process_first(self):
        """Context manager: the main process runs the block first (downloads, caches), then the others."""
        return self.accelerator.main_process_first()

    def progress(self, iterable: Iterable, desc: str, total: int | None = None):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=not self.is_main, leave=False, dynamic_ncols=True)

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)


def run_batches(runner: Runner, count: int, batch_size: int, work: Callable[[list[int]], list], desc: str) -> list:
    """Run `work(indices) -> records` over this process's batches, gather, and sort by `record["index"]`."""
    mine = runner.batches(count, batch_size)
    records = []
    for indices in runner.progress(mine, desc=desc, total=len(mine)):
        records.extend(work(indices))
    everything = runner.gather(records)
    everything.sort(key=lambda record: record["index"])
    return everything


# ----------------------------------------------------------------------------------------------- data


def load_data(
    dataset: str,
    split: str | None = None,
    config: str | None = None,
    where: Sequence[str] = (),
    max_samples: int | None = None,
    image_column: str = "image",
):
    """A `datasets.Dataset` from a Hub name, a local folder or a JSON-lines file.

    - A directory: loaded with `imagefolder` (class sub-folders give a `label` column; a `metadata.jsonl`
      or `metadata.csv` with `file_name` adds captions, questions, ... as columns).
    - A `.jsonl` / `.json` file: one record per line; `image_column` holds image paths, relative to the
      file's folder or absolute, and becomes an `Image` column.
    - Anything else: a dataset name on the Hugging Face Hub (`config` selects its configuration).

    `split` defaults to the first of test / validation / val / train present. `where` keeps rows whose
    column equals a value (`"split=test"`); `max_samples` keeps the first rows.
    """
    import datasets

    path = Path(dataset)
    try:
        if path.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        elif path.is_file() and path.suffix in (".jsonl", ".json"):
            loaded = datasets.load_dataset("json", data_files=str(path))
            loaded = _resolve_image_paths(loaded, path.parent, image_column)
        elif path.suffix in (".jsonl", ".json") or dataset.startswith((".", "/")):
            raise UsageError(f"Dataset file or folder {dataset!r} does not exist.")
        else:  # the Hub: download only the split evaluated
            names = datasets.get_dataset_split_names(dataset, config)
            split = _pick_split(dataset, split, names)
            loaded = {split: datasets.load_dataset(dataset, config, split=split)}
    except UsageError:
        raise
    except Exception as error:  # network, missing dataset, bad files: all end as a usage error
        raise UsageError(f"Could not load dataset {dataset!r}: {type(error).__name__}: {error}") from error
    data = loaded[_pick_split(dataset, split, list(loaded))]
    for condition in where:
        if "=" not in condition:
            raise UsageError(f"--where takes COLUMN=VALUE, got {condition!r}.")
        column, value = condition.split("=", 1)
        require_columns(data, where=column)
        data = data.filter(lambda v: str(v) == value, input_columns=[column])
    if max_samples is not None:
        data = data.select(range(min(max_samples, len(data))))
    if len(data) == 0:
        raise UsageError(f"Dataset {dataset!r} (split {split!r}) has no rows to evaluate.")
    return data


def _pick_split(dataset: str, split: str | None, names: Sequence[str]) -> str:
    if split is None:
        return next((name for name in ("test", "validation", "val", "train") if name in names), names[0])
    if split not in names:
        raise UsageError(f"Dataset {dataset!r} has no split {split!r}; it has: {', '.join(names)}.")
    return split


def _resolve_image_paths(loaded, folder: Path, column: str):
    import datasets

    first = next(iter(loaded.values()))
    if column not in first.column_names:
        return loaded

    def absolute(value):
        return value if value is None or os.path.isabs(value) else str(folder / value)

    loaded = loaded.map(lambda v: {column: absolute(v)}, input_columns=[column])
    return loaded.cast_column(column, datasets.Image())


def require_columns(data, **columns: str | Sequence[str] | None) -> None:
    """Raise a `UsageError` naming the option when a column the script needs is missing."""
    names = data.column_names
    for option, wanted in columns.items():
        if wanted is None:
            continue
        for column in [wanted] if isinstance(wanted, str) else wanted:
            if column not in names:
                flag = "--" + option.replace("_", "-")
                raise UsageError(
                    f"The dataset has no column {column!r} (its columns: {', '.join(names)}); "
                    f"name the right one with {flag}."
                )


def split_columns(text: str | None) -> list[str] | None:
    """`"caption_0,caption_1"` -> a list of column names (None stays None)."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def to_rgb(image):
    """A PIL RGB image from a `datasets` image value (PIL image, path, or {"path", "bytes"})."""
    from PIL import Image

    if isinstance(image, dict):
        if image.get("bytes"):
            import io

            image = Image.open(io.BytesIO(image["bytes"]))
        else:
            image = Image.open(image["path"])
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    return image.convert("RGB")


def text_values(value, keys: Sequence[str] = ("caption", "raw", "text", "answer", "sentence")) -> list[str]:
    """A list of strings from a column value: a string, a list of strings, or a list of dicts."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return text_values(value[key], keys)
        raise UsageError(f"Cannot read text from {value!r}: expected one of the keys {list(keys)}.")
    texts = []
    for item in value:
        texts.extend(text_values(item, keys))
    return texts


def row_texts(row: dict, columns: Sequence[str]) -> list[str]:
    """The texts of one row over one or more columns (e.g. `caption_0` ... `caption_4`)."""
    texts = []
    for column in columns:
        texts.extend(t for t in text_values(row[column]) if t.strip())
    return texts


# -------------------------------------------------------------------------------------------- loading


def load_model(path: str, auto_classes: Sequence[str], dtype: str | None = None, attn: str | None = None):
    """A model from a folder or Hub id, in eval mode, with any Turbo patch removed (the stock model).

    The class named by the checkpoint's `architectures` is used when transformers or turbo_hf has it;
    otherwise the first of `auto_classes` that loads.
    """
    import transformers
    from transformers import AutoConfig

    kwargs = {}
    if dtype:
        kwargs["dtype"] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if attn:
        kwargs["attn_implementation"] = attn
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as error:
        raise UsageError(f"Could not load a model config from {path!r}: {error}") from error
    package = sys.modules.get(__name__.rpartition(".")[0])  # turbo_hf: its Turbo classes
    candidates = []
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None) or getattr(package, name, None)
        if cls is not None:
            candidates.append(cls)
    candidates += [getattr(transformers, name) for name in auto_classes if hasattr(transformers, name)]
    errors = []
    for cls in candidates:
        try:
            model = cls.from_pretrained(path, **kwargs)
            break
        except Exception as error:  # try the next class
            errors.append(f"{cls.__name__}: {error}")
    else:
        raise UsageError(f"Could not load {path!r} with {', '.join(c.__name__ for c in candidates)}: " + "; ".join(errors))
    if is_turbo_applied(model):
        remove_turbo(model)
    return model.eval()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


def image_preprocessor(path: str, model: nn.Module, image_size: int | None = None) -> Callable[[list], torch.Tensor]:
    """images (PIL) -> pixel values, with the checkpoint's image processor (at `image_size` px when given).

    Without a saved image processor: resize the shortest edge, centre crop to the model's image size,
    ImageNet normalisation.
    """
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except Exception:
        processor = None
    size = image_size or getattr(_vision_config(model.config), "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if processor is None:
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

        def fallback(images: list) -> torch.Tensor:
            out = []
            for image in images:
                x = torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
                h, w = x.shape[-2:]
                scale = size / min(h, w)
                x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                  mode="bicubic", align_corners=False, antialias=True)
                top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
                x = x[0, :, top : top + size, left : left + size].clamp(0, 1)
                out.append((x - mean) / std)
            return torch.stack(out)

        return fallback
    kwargs = {}
    if image_size is not None:
        current = getattr(processor, "size", None) or {}
        if "shortest_edge" in current:
            kwargs = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
        else:
            kwargs = {"size": {"height": image_size, "width": image_size}}

    def run(images: list) -> torch.Tensor:
        return processor(images=[to_rgb(image) for image in images], return_tensors="pt", **kwargs)["pixel_values"]

    return run


def interpolation_kwargs(function: Callable, model: nn.Module, pixel_values: torch.Tensor) -> dict:
    """`{"interpolate_pos_encoding": True}` when the pixels are not the model's image size and `function`
    takes that argument (ViT, CLIP, SigLIP, BLIP); `{}` otherwise (DINOv2 always interpolates)."""
    if not needs_interpolation(model, pixel_values):
        return {}
    try:
        import inspect

        accepted = "interpolate_pos_encoding" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        accepted = False
    return {"interpolate_pos_encoding": True} if accepted else {}


def needs_interpolation(model: nn.Module, pixel_values: torch.Tensor) -> bool:
    """Whether the pixel size differs from the model's configured image size."""
    size = getattr(_vision_config(model.config), "image_size", None)
    if size is None:
        return False
    size = size if isinstance(size, (list, tuple)) else (size, size)
    return tuple(pixel_values.shape[-2:]) != tuple(size)


# Default prompts of the generative families (captioning, and VQA where `{question}` is filled in).
CAPTION_PROMPTS = {
    "blip": None,
    "blip-2": None,
    "instructblip": "A short image description:",
    "llava": "USER: <image>\nWrite a short caption for this image. ASSISTANT:",
    "llava_next": "[INST] <image>\nWrite a short caption for this image. [/INST]",
}
VQA_PROMPTS = {
    "blip": "{question}",
    "blip-2": "Question: {question} Short answer:",
    "instructblip": "Question: {question} Short answer:",
    "llava": "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:",
    "llava_next": "[INST] <image>\n{question}\nAnswer the question using a single word or phrase. [/INST]",
}


def model_type_of(model: nn.Module) -> str:
    """The stock `model_type` of a (possibly Turbo) model: `turbo_blip` -> `blip`."""
    model_type = getattr(model.config, "model_type", "")
    return model_type[len("turbo_"):] if model_type.startswith("turbo_") else model_type


def load_processor(path: str, model: nn.Module):
    """The checkpoint's multimodal processor; left padding for decoder-only language models."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception as error:
        raise UsageError(f"No processor (image processor + tokenizer) found with {path!r}: {error}") from error
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and model_type_of(model) != "blip":
        tokenizer.padding_side = "left"
    return processor


def generation_inputs(processor, images: list, prompts: list[str] | None, device, dtype) -> dict:
    """Processor outputs for a batch of images (and prompts), on the device, pixel values in `dtype`."""
    kwargs = {"images": [to_rgb(image) for image in images], "return_tensors": "pt"}
    if prompts is not None:
        kwargs.update(text=list(prompts), padding=True)
    encoded = processor(**kwargs)
    inputs = {}
    for key, value in encoded.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
            inputs[key] = value
    return inputs


def decode_generated(processor, output_ids: torch.Tensor, inputs: dict, prompts: list[str] | None) -> list[str]:
    """Generated text without the prompt (whether `generate` returned the prompt tokens or not)."""
    input_ids = inputs.get("input_ids")
    if input_ids is not None and output_ids.shape[1] >= input_ids.shape[1]:
        if torch.equal(output_ids[:, : input_ids.shape[1]].to(input_ids.device), input_ids):
            output_ids = output_ids[:, input_ids.shape[1] :]
    texts = processor.batch_decode(output_ids, skip_special_tokens=True)
    cleaned = []
    for index, text in enumerate(texts):
        text = text.strip()
        prompt = prompts[index] if prompts else None
        if prompt:
            visible = prompt.replace("<image>", "").strip()
            if visible and text.lower().startswith(visible.lower()):
                text = text[len(visible) :].strip()
        cleaned.append(text)
    return cleaned


# --------------------------------------------------------------------------------------- measurement


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.synchronize(device)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one call, counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
    fused attention; the CPU flash-attention kernel is added, which torch does not count by itself)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        custom[cpu_flash] = _sdpa_cpu_flops
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        call()
    return int(counter.get_total_flops())


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:
        return None


def peak_memory(call: Callable[[], object], device: torch.device) -> dict:
    """Peak memory of one call: CUDA allocator peak (and its increase over the start) on GPU, else the
    process's resident memory sampled every millisecond during the call."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            call()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"kind": "cuda_max_allocated", "peak_mb": peak / 2**20, "increase_mb": (peak - start) / 2**20}
    start = _rss_bytes()
    if start is None:
        with torch.inference_mode():
            call()
        return {"kind": "unavailable", "peak_mb": None, "increase_mb": None}
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            value = _rss_bytes()
            if value is not None and value > peak[0]:
                peak[0] = value
            stop.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with torch.inference_mode():
            call()
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes() or 0)
    return {"kind": "process_rss", "peak_mb": peak[0] / 2**20, "increase_mb": (peak[0] - start) / 2**20}


def measure_settings(
    model: nn.Module,
    settings: Sequence[Setting],
    call: Callable[[], object],
    batch_size: int,
    device: torch.device | str,
    warmup: int = 1,
    repeats: int = 5,
    flops: bool = True,
    memory: bool = True,
    progress: bool = True,
) -> dict[str, dict]:
    """Time `call` (one batch of work on `model`) under every setting, fairly.

    `warmup` untimed rounds, then `repeats` timed rounds; each round visits every setting once, starting
    from a setting that rotates from round to round, so that drift of a shared machine hits all alike.
    Turbo is applied before the clock starts and the device is synchronised around every timed call.
    Afterwards, one untimed call per setting measures peak memory and one counts FLOPs.

    Returns:
        For each setting name: `median_ms`, `min_ms`, `max_ms`, `latencies_ms`, `throughput` (samples/s at
        the median), `speedup` (stock median / this median; needs the `stock` setting), `flops`,
        `gflops_per_sample`, `memory`.
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}.")
    settings = list(settings)
    times: dict[str, list[float]] = {s.name: [] for s in settings}
    total = (warmup + repeats) * len(settings)
    bar = tqdm(total=total, desc="timing", leave=False, disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for round_index in range(warmup + repeats):
                shift = round_index % len(settings)
                for setting in settings[shift:] + settings[:shift]:
                    use_setting(model, setting)
                    synchronize(device)
                    start = time.perf_counter()
                    call()
                    synchronize(device)
                    elapsed = time.perf_counter() - start
                    if round_index >= warmup:
                        times[setting.name].append(elapsed)
                    bar.update()
        results = {}
        for setting in settings:
            use_setting(model, setting)
            median = statistics.median(times[setting.name])
            entry = {
                "median_ms": 1000 * median,
                "min_ms": 1000 * min(times[setting.name]),
                "max_ms": 1000 * max(times[setting.name]),
                "latencies_ms": [round(1000 * t, 3) for t in times[setting.name]],
                "throughput": batch_size / median,
                "batch_size": batch_size,
                "warmup": warmup,
                "repeats": repeats,
            }
            if memory:
                entry["memory"] = peak_memory(call, device)
            if flops:
                entry["flops"] = count_flops(call)
                entry["gflops_per_sample"] = entry["flops"] / batch_size / 1e9
            results[setting.name] = entry
    finally:
        bar.close()
        if is_turbo_applied(model):
            remove_turbo(model)
    if "stock" in results:
        stock = results["stock"]["median_ms"]
        for entry in results.values():
            entry["speedup"] = stock / entry["median_ms"]
    return results


# -------------------------------------------------------------------------------------------- features


def as_tensor(output) -> torch.Tensor:
    """Embeddings from `get_image_features` / `get_text_features`, whether a tensor or an output object."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output[0]


def token_features(output, has_cls: bool = True) -> torch.Tensor:
    """Features of a vision encoder output over all tokens: [CLS] (or the pooled output when there is no
    [CLS]) joined with the mean of the unmerged tokens (patches only when there is a [CLS])."""
    hidden = output.last_hidden_state
    if hidden.ndim != 3:  # a convolutional feature map: use the pooled output
        pooled = getattr(output, "pooler_output", None)
        return (pooled if pooled is not None else hidden.flatten(2).mean(dim=-1)).flatten(1)
    source = getattr(output, "token_source", None)
    if source is not None:
        hidden = unmerge(hidden, source)
    if has_cls:
        return torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=-1)
    pooled = getattr(output, "pooler_output", None)
    pooled = pooled if pooled is not None else hidden.mean(dim=1)
    return torch.cat([pooled, hidden.mean(dim=1)], dim=-1)


# ---------------------------------------------------------------------------------------------- output


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def run_metadata(runner: Runner | None = None, **settings) -> dict:
    """Machine, library versions, git state, process count and the given settings, for the JSON results."""
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu_model = platform.processor() or None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    status = _git("status", "--porcelain", "--", "src")
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "datasets", "evaluate", "numpy", "scikit-learn", "turbo-hf"):
        versions[name] = _version(name)
    versions["torch"] = torch.__version__
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_model": cpu_model,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpus": gpus,
            "cuda": torch.version.cuda,
        },
        "versions": versions,
        "git": {"commit": _git("rev-parse", "HEAD"), "src_dirty": bool(status) if status is not None else None},
        "processes": runner.num_processes if runner is not None else 1,
        "device": str(runner.device) if runner is not None else None,
        "command": " ".join(sys.argv),
        "settings": settings,
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column, "l" or "r" (default: first left, the rest right)."""
    align = list(align or ["l"] + ["r"] * (len(headers) - 1))
    marks = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_metric(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def results_table(rows: Sequence[dict], metrics: Sequence[tuple[str, str]]) -> str:
    """The markdown table of a results list: setting, tokens, FLOP limit, measured speed, then metrics."""
    headers = ["setting", "final tokens", "FLOP limit", "measured speed-up", "ms / batch", "samples/s",
               "GFLOPs / sample", "peak MB"]
    headers += [label for _, label in metrics]
    body = []
    for row in rows:
        speed = row.get("speed") or {}
        memory = speed.get("memory") or {}
        plan = row.get("plan") or {}
        body.append(
            [row["name"], plan.get("final_tokens") or "all", f"{plan.get('flops_speed_limit', 1.0):.2f}x",
             f"{speed['speedup']:.2f}x" if "speedup" in speed else "n/a",
             format_metric(speed.get("median_ms"), 1), format_metric(speed.get("throughput"), 1),
             f"{speed['gflops_per_sample']:.3g}" if speed.get("gflops_per_sample") is not None else "n/a",
             format_metric(memory.get("peak_mb"), 0)]
            + [format_metric((row.get("metrics") or {}).get(key)) for key, _ in metrics]
        )
    return markdown_table(headers, body)


def plot_quality_vs_speed(
    rows: Sequence[dict], metrics: Sequence[tuple[str, str]], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Quality against measured speed-up, one panel per metric, one line per mode (each line starts at the
    stock model, its r = 0 point). Returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = [(k, l) for k, l in metrics if any(isinstance((r.get("metrics") or {}).get(k), (int, float)) for r in rows)]
    if not metrics:
        return None
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    stock = next((row for row in rows if row["mode"] == "stock"), None)
    for axis, (key, label) in zip(axes[0], metrics):
        for mode in MODE_ORDER:
            points = [row for row in rows if row["mode"] == mode]
            if mode != "stock" and stock is not None and points:
                points = [stock] + sorted(points, key=lambda row: _r_key(row["r"]))
            xs, ys = [], []
            for row in points:
                value = (row.get("metrics") or {}).get(key)
                speed = (row.get("speed") or {}).get("speedup")
                if isinstance(value, (int, float)) and speed is not None:
                    xs.append(speed)
                    ys.append(value)
            if not xs:
                continue
            colour, marker = MODE_STYLES[mode]
            if mode == "stock":
                axis.scatter(xs, ys, color=colour, marker=marker, s=120, zorder=5, label=MODE_LABELS[mode])
            else:
                axis.plot(xs, ys, color=colour, marker=marker, label=MODE_LABELS[mode])
                for x, y, row in zip(xs[1:], ys[1:], points[1:]):
                    axis.annotate(f"r={row['r']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.set_xlabel("measured speed-up over the stock model (x)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _r_key(r) -> float:
    return float(r) if isinstance(r, (int, float)) else float(sum(r))


def save_results(
    out_dir: str | os.PathLike, stem: str, payload: dict, markdown: str, plot_metrics: Sequence[tuple[str, str]],
    title: str = "",
) -> dict[str, str]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` (quality vs speed) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    plot = plot_quality_vs_speed(payload["rows"], plot_metrics, paths["plot"], title)
    if plot is None:
        paths.pop("plot")
    else:
        markdown = markdown.rstrip() + f"\n\n![quality against measured speed-up]({paths['plot'].name})\n"
    payload["files"] = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown.rstrip() + "\n")
    return {k: str(v) for k, v in paths.items()}


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ------------------------------------------------------------------------------------------ the driver


def evaluate_settings(
    runner: Runner,
    model: nn.Module,
    settings: Sequence[Setting],
    evaluate: Callable[[Setting], dict | None],
    timing_call: Callable[[], object] | None,
    timing_batch_size: int,
    timing_pixels: torch.Tensor | None,
    warmup: int = 1,
    repeats: int = 5,
    flops: bool = True,
) -> list[dict] | None:
    """Evaluate every setting (quality on all processes, `evaluate(setting)` returns the metrics on the main
    process), then time `timing_call` under every setting on the main process while the others wait.

    Returns the rows (on the main process; None elsewhere): name, mode, r, Turbo settings, plan (token
    counts, FLOP fraction), metrics and speed.
    """
    check_settings(model, settings)
    rows = []
    for setting in settings:
        runner.print(f"[{setting.name}] evaluating ...")
        use_setting(model, setting)
        try:
            metrics = evaluate(setting)
        finally:
            if is_turbo_applied(model):
                remove_turbo(model)
        if runner.is_main:
            shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
            runner.print(f"[{setting.name}] " + ", ".join(f"{k}={v:.3f}" for k, v in shown.items()))
        rows.append({**setting.summary(), "metrics": metrics, "plan": setting_plan(model, setting, timing_pixels)})
    speed = {}
    if runner.is_main and timing_call is not None:
        runner.print(f"timing {len(settings)} settings: {warmup} warm-up + {repeats} timed rounds ...")
        speed = measure_settings(model, settings, timing_call, timing_batch_size, runner.device, warmup, repeats, flops=flops)
    runner.wait()
    if not runner.is_main:
        return None
    for row in rows:
        row["speed"] = speed.get(row["name"])
    return rows


def write_outputs(
    runner: Runner,
    args,
    task: str,
    rows: list[dict] | None,
    metrics: Sequence[tuple[str, str]],
    title: str,
    notes: str = "",
    extra: dict | None = None,
    plot_metrics: Sequence[tuple[str, str]] | None = None,
) -> dict | None:
    """On the main process: write `<name>.json`, `<name>.md`, `<name>.png` into `args.out`, print the table.

    Returns the payload (None on other processes).
    """
    if not runner.is_main or rows is None:
        return None
    settings = {k: v for k, v in vars(args).items() if not callable(v)}
    payload = {"task": task, "metadata": run_metadata(runner, **settings), **(extra or {}), "rows": rows}
    table = results_table(rows, metrics)
    meta = payload["metadata"]
    run_lines = [
        f"- date {meta['date']}; {meta['processes']} process(es) on {meta['device']}; "
        f"{meta['machine']['cpu_model']} ({meta['machine']['cpu_count']} CPUs), GPUs: {meta['machine']['gpus'] or 'none'}",
        "- " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- command: `{meta['command']}`",
    ]
    timing = next((row["speed"] for row in rows if row.get("speed")), None)
    speed_note = (
        f"Speed: median of {timing['repeats']} interleaved timed rounds after {timing['warmup']} warm-up "
        f"round(s), batch {timing['batch_size']}, on the main process; speed-up = stock median / setting "
        f"median, measured in this run. FLOP limit = 1 / the vision encoder's FLOP fraction kept."
        if timing else "Speed: not measured."
    )
    markdown = "\n\n".join(part for part in [f"# {title}", notes, speed_note, table, "## Run", "\n".join(run_lines)] if part)
    paths = save_results(args.out, args.name or task, payload, markdown, plot_metrics or metrics, title)
    print("\n" + table + "\n")
    print("wrote " + ", ".join(paths.values()), flush=True)
    return payload


# ------------------------------------------------------------------------------------------------ CLI


def add_common_arguments(parser, batch_size: int = 16) -> None:
    """The arguments every evaluation script shares."""
    parser.add_argument("--model", required=True, help="model folder or Hub id (stock or Turbo checkpoint)")
    parser.add_argument("--dataset", required=True,
                        help="Hub dataset name, an imagefolder directory, or a .jsonl file of image paths + fields")
    parser.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    parser.add_argument("--split", default=None, help="split (default: test, validation, val or train)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep rows whose column equals the value (repeatable), e.g. split=test")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate the first N rows only")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--modes", type=_mode_type, default=["stock", "tome", "turbo"],
                        help="comma-separated modes: none (=stock), random, tome, semantic, turbo")
    parser.add_argument("--r", type=_r_type, default=None,
                        help="comma-separated tokens removed per layer, e.g. 0,16,30 (default: the preset's r)")
    parser.add_argument("--turbo-preset", default=None,
                        help="preset name from configs/ or a preset JSON: Turbo settings other than r")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    parser.add_argument("--attn", choices=["eager", "sdpa"], default=None, help="attention implementation")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--timing-batch-size", type=int, default=None, help="batch timed (default: --batch-size)")
    parser.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    parser.add_argument("--out", default="eval_results", help="output folder")
    parser.add_argument("--name", default=None, help="output file stem (default: the task name)")


def _mode_type(text: str) -> list[str]:
    import argparse

    try:
        return parse_modes(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _r_type(text: str) -> list[int]:
    import argparse

    try:
        return parse_ints(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def settings_from_args(args) -> list[Setting]:
    """Settings from `--modes`, `--r` and `--turbo-preset` (the other shared arguments are checked too)."""
    if args.batch_size < 1 or (getattr(args, "timing_batch_size", None) or 1) < 1:
        raise UsageError("--batch-size and --timing-batch-size must be >= 1.")
    if getattr(args, "repeats", 1) < 1 or getattr(args, "warmup", 0) < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0.")
    if getattr(args, "max_samples", None) is not None and args.max_samples < 1:
        raise UsageError("--max-samples must be >= 1.")
    base, preset_r = preset_base(args.turbo_preset)
    r_values = args.r if args.r is not None else ([preset_r] if preset_r is not None else None)
    if r_values is None:
        if set(args.modes) - {"stock"}:
            raise UsageError("Give --r (e.g. --r 0,16) or a --turbo-preset that sets r.")
        r_values = [0]
    return build_settings(args.modes, r_values, base)


def cli_main(run: Callable[[list[str] | None], int | None], argv: list[str] | None, prog: str) -> int:
    """Run a script's `run(argv)`; a usage error or an unsupported model ends with its message on stderr and
    exit code 2 (argparse errors already do), not a traceback."""
    try:
        return run(argv) or 0
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError) as error:
        print(f"{prog}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


__all__ = [
    "CAPTION_PROMPTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODE_ALIASES",
    "MODE_LABELS",
    "MODE_ORDER",
    "MODE_STYLES",
    "Runner",
    "Setting",
    "UsageError",
    "VQA_PROMPTS",
    "add_common_arguments",
    "as_tensor",
    "build_settings",
    "check_settings",
    "cli_main",
    "count_flops",
    "decode_generated",
    "evaluate_settings",
    "format_metric",
    "generation_inputs",
    "image_preprocessor",
    "interpolation_kwargs",
    "load_data",
    "load_model",
    "load_processor",
    "markdown_table",
    "measure_settings",
    "model_type_of",
    "needs_interpolation",
    "parse_ints",
    "parse_modes",
    "peak_memory",
    "plot_quality_vs_speed",
    "preset_base",
    "require_columns",
    "results_table",
    "row_texts",
    "run_batches",
    "run_metadata",
    "save_results",
    "setting_plan",
    "settings_from_args",
    "shard_batches",
    "split_columns",
    "synchronize",
    "text_values",
    "to_rgb",
    "token_features",
    "use_setting",
    "vision_patch_grid",
    "write_outputs",
]
