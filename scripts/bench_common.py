"""Shared helpers of `benchmark_speed.py` and `benchmark_quality.py` (imported as a sibling module).

Model loading, run metadata, image preprocessing, feature extraction and markdown/json output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "src") not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT / "src"))

from transformers import AutoModel  # noqa: E402

import turbo_hf  # noqa: E402
from turbo_hf import unmerge  # noqa: E402
from turbo_hf.evaluation.report import run_metadata  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------------------------- model


def load_model(path: str | None, attn: str = "sdpa"):
    """The stock model (eval mode) and the folder it came from; the real DINOv2-S/14 when `path` is None."""
    folder = Path(path) if path else turbo_hf.fetch_real_weights()
    model = AutoModel.from_pretrained(folder, attn_implementation=attn).eval()
    return model, folder


def num_tokens(model, image_size: int) -> int:
    """Tokens the encoder sees for a square image: (image_size / patch)^2 patches + [CLS]."""
    patch = model.config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return (image_size // patch) ** 2 + 1


def plan_for(model, config, tokens: int) -> dict:
    """`turbo_plan` of `config` at `tokens` tokens (the model is left unpatched)."""
    turbo_hf.apply_turbo(model, config)
    try:
        return turbo_hf.turbo_plan(model, tokens)
    finally:
        turbo_hf.remove_turbo(model)


def r_for_speed_limit(model, tokens: int, target: float, base: dict | None = None, max_r: int = 64) -> int:
    """The constant `r` whose theoretical speed limit (1 / flops_fraction) is closest to `target`."""
    best, best_gap = 0, float("inf")
    for r in range(0, max_r + 1):
        try:
            plan = plan_for(model, turbo_hf.TurboConfig(r=r, **(base or {})), tokens)
        except ValueError:
            break
        gap = abs(1 / plan["flops_fraction"] - target)
        if gap < best_gap:
            best, best_gap = r, gap
    return best


# -------------------------------------------------------------------------------------------- metadata


def metadata(model_folder: Path | None = None, **settings) -> dict:
    """Where and how a benchmark ran (`turbo_hf.evaluation.report.run_metadata`), plus the model it used."""
    marker = None
    if model_folder is not None and (Path(model_folder) / "turbo_hf_real_weights.json").is_file():
        marker = json.loads((Path(model_folder) / "turbo_hf_real_weights.json").read_text())
    meta = run_metadata(**settings)
    meta["model"] = {"folder": str(model_folder) if model_folder else None, "real_weights": marker}
    return meta


# --------------------------------------------------------------------------------------------- images


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet-normalised pixel values."""
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def gray_to_pixels(images: np.ndarray, size: int, scale: float = 1.0) -> torch.Tensor:
    """Grayscale (B, h, w) with values in [0, scale] -> (B, 3, size, size) pixel values.

    Divided by `scale` (16 for sklearn digits), replicated to three channels, upscaled bilinearly,
    ImageNet-normalised.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) / scale)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return normalize(x.expand(-1, 3, -1, -1).contiguous())


def to_rgb01(image: np.ndarray) -> np.ndarray:
    """Any skimage/sklearn image (gray, RGB, RGBA; uint8, bool or float) -> float32 (h, w, 3) in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    else:
        image = image.astype(np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 4:  # composite RGBA on white
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + (1 - alpha)
    return np.clip(image, 0, 1)


def resize_center_crop(image: np.ndarray, size: int) -> torch.Tensor:
    """(h, w, 3) in [0, 1] -> (3, size, size): shortest edge to `size` (bicubic, antialiased), centre crop."""
    x = torch.as_tensor(image).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[0, :, top : top + size, left : left + size].clamp(0, 1)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, min_frac: float = 0.35) -> torch.Tensor:
    """A random square crop (side between `min_frac` and 1 of the short edge), resized to (3, size, size)."""
    h, w = image.shape[:2]
    side = int(rng.uniform(min_frac, 1.0) * min(h, w))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return resize_center_crop(image[top : top + side, left : left + side], size)


# ------------------------------------------------------------------------------------------- features


def split_features(output) -> tuple[torch.Tensor, torch.Tensor]:
    """([CLS] output, mean of the unmerged patch tokens) of a (possibly patched) model's output."""
    hidden = output.last_hidden_state
    source = getattr(output, "token_source", None)
    if source is not None:
        hidden = unmerge(hidden, source)
    return hidden[:, 0], hidden[:, 1:].mean(dim=1)


@torch.inference_mode()
def extract(model, pixels: torch.Tensor, batch_size: int = 32, desc: str | None = None) -> dict[str, torch.Tensor]:
    """{"cls", "patch_mean", "pooler"} features of `model` over `pixels`, in batches."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    cls, mean, pooler = [], [], []
    for start in tqdm(range(0, len(pixels), batch_size), desc=desc, leave=False, disable=desc is None):
        out = model(pixel_values=pixels[start : start + batch_size])
        c, m = split_features(out)
        cls.append(c.float())
        mean.append(m.float())
        pool = getattr(out, "pooler_output", None)
        pooler.append((pool if pool is not None else c).float())
    return {"cls": torch.cat(cls), "patch_mean": torch.cat(mean), "pooler": torch.cat(pooler)}


# --------------------------------------------------------------------------------------------- output


def markdown_table(headers: list[str], rows: list[list], align: list[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column: "l" or "r" (default: first left, the rest right)."""
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    marks = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save(out_dir: str | Path, stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `out_dir` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def publish(out_dir: str | Path, stem: str, title: str, notes: str, table: str, meta: dict, rows: list) -> dict:
    """Print a benchmark's table and save it (`<stem>.json` and `<stem>.md` with notes and run metadata)."""
    runtime = meta["runtime_s"]
    markdown = "\n\n".join([title, notes, table, "## Run", metadata_markdown(meta) + f"\n- total runtime: {runtime:.0f} s"])
    print()
    print(table)
    json_path, md_path = save(out_dir, stem, {"metadata": meta, "rows": rows}, markdown)
    print(f"\nsaved {json_path} and {md_path}  (total {runtime:.0f} s)")
    return {"metadata": meta, "rows": rows}


def metadata_markdown(meta: dict) -> str:
    """A short human-readable block of the metadata for the .md files."""
    m, v = meta["machine"], meta["versions"]
    git = meta["git"]
    return "\n".join(
        [
            f"- date: {meta['date']}",
            f"- machine: {m['platform']}, {m['cpu_model']}, {m['cpu_count']} CPUs "
            f"(affinity {m['cpu_affinity']}), load average at start {m['load_average_at_start']}",
            f"- torch {v['torch']} ({meta['torch_num_threads']} threads), transformers {v['transformers']}, "
            f"turbo_hf {v['turbo_hf']}, scikit-learn {v['scikit-learn']}, python {v['python']}",
            f"- git commit {git['commit']}" + (" (src/ has uncommitted changes)" if git["src_dirty"] else ""),
            f"- model: {meta['model']['folder']}",
        ]
    )


class Stopwatch:
    """Wall time of named phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str, since: float) -> float:
        self.phases[name] = round(time.perf_counter() - since, 2)
        return self.phases[name]

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)
