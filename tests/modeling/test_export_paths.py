"""Exporting Turbo vision encoders at r>0: `torch.export` for every vision family, the dynamo ONNX exporter checked
against onnxruntime, and a clear error from the TorchScript-based exporters, which cannot trace the merge step."""

import io

import pytest
import torch
from transformers import Blip2VisionConfig, Blip2VisionModel, BlipVisionConfig, BlipVisionModel

from turbo_hf.testing.tiny_models import IMAGE_SIZE, LAYERS, PATCH, build
from turbo_hf import TurboConfig, apply_turbo

R = 6
TOWER = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
             image_size=IMAGE_SIZE, patch_size=PATCH)


def vision_model(name):
    """A tiny random vision encoder of each family, in eval mode, with Turbo at r=R."""
    torch.manual_seed(0)
    if name == "blip-vision":
        model = BlipVisionModel(BlipVisionConfig(**TOWER))
    elif name == "blip2-vision":
        config = Blip2VisionConfig(**TOWER)
        config._attn_implementation = "sdpa"
        model = Blip2VisionModel(config)
    else:
        model = build(name)
    return apply_turbo(model.eval(), TurboConfig(r=R))


def pixels(seed):
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["vit", "dinov2", "clip-vision", "siglip-vision", "blip-vision", "blip2-vision"])
def test_torch_export_matches_eager_on_a_new_input(name):
    model = vision_model(name)
    program = torch.export.export(model, (pixels(1),))
    other = pixels(2)  # the merge plan is computed from the data inside the graph, not baked in
    with torch.no_grad():
        expected = model(other)
        got = program.module()(other)
    assert got.last_hidden_state.shape[1] == expected.last_hidden_state.shape[1] < (IMAGE_SIZE // PATCH) ** 2
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.token_source, expected.token_source)


@pytest.mark.parametrize("name", ["vit", "dinov2", "clip-vision", "siglip-vision", "blip-vision", "blip2-vision"])
def test_dynamo_onnx_export_matches_eager_in_onnxruntime(name):
    import onnxruntime  # dev dependencies, with onnxscript for the dynamo exporter

    model = vision_model(name)
    program = torch.onnx.export(model, (pixels(1),), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString())
    other = pixels(2)
    hidden, pooled, sizes, source = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    with torch.no_grad():
        expected = model(other)
    torch.testing.assert_close(torch.from_numpy(hidden), expected.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(pooled), expected.pooler_output, atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.from_numpy(sizes), expected.token_sizes)
    assert torch.equal(torch.from_numpy(source), expected.token_source)


def test_torchscript_exporters_refuse_merging_with_a_clear_error():
    model = vision_model("vit")
    with pytest.raises(RuntimeError, match="TorchScript cannot trace Turbo's token merging.*dynamo=True"):
        torch.onnx.export(model, (pixels(1),), io.BytesIO(), dynamo=False)
    with pytest.raises(RuntimeError, match="TorchScript cannot trace"), torch.no_grad():
        torch.jit.trace(model, (pixels(1),), strict=False)


def test_r0_still_traces_with_torchscript():
    model = apply_turbo(build("vit"), TurboConfig(r=0))
    with torch.no_grad():
        traced = torch.jit.trace(model, (pixels(1),), strict=False)
        torch.testing.assert_close(traced(pixels(2))["last_hidden_state"], model(pixels(2)).last_hidden_state)


@pytest.mark.parametrize("name", ["vit", "dinov2"])
def test_a_padding_mask_the_caller_passes_is_still_refused(name):
    model = vision_model(name)
    with pytest.raises(ValueError, match="`attention_mask` is not supported"):
        model(pixels(1), attention_mask=torch.ones(2, (IMAGE_SIZE // PATCH) ** 2 + 1, dtype=torch.long))
