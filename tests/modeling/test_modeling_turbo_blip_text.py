"""Turbo in BLIP's ITM text encoder (`TurboConfig(text_r=..., image_keep=...)` through `apply_turbo`): text merging
(padding never merges, [CLS] protected) and cross-modal image pruning (image tokens ranked by the cross-attention
they receive), on tiny random retrieval models."""

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import BlipConfig, BlipForImageTextRetrieval
from transformers.models.blip.modeling_blip_text import BlipTextModel

from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo, turbo_plan
from turbo_hf.modeling import patching
from turbo_hf.modeling.modeling_turbo_blip import TurboBlipConfig, TurboBlipForImageTextRetrieval
from turbo_hf.modeling.modeling_turbo_blip_text import TurboBlipTextItmModel, image_token_scores, select_image_tokens

IMAGE, PATCH = 32, 8  # 16 patches + [CLS] = 17 image tokens
SEP, PAD = 98, 0
TOWER = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def config(config_class=BlipConfig, **kw):
    text = dict(TOWER, vocab_size=99, num_hidden_layers=3, max_position_embeddings=64, initializer_range=0.3,
                bos_token_id=97, sep_token_id=SEP, eos_token_id=2, pad_token_id=PAD)
    vision = dict(TOWER, num_hidden_layers=2, image_size=IMAGE, patch_size=PATCH, initializer_range=0.2)
    return config_class(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16,
                        initializer_range=0.3, **kw)


def build(seed=0):
    torch.manual_seed(seed)
    return BlipForImageTextRetrieval(config()).eval()


def pixels(batch, seed=1):
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def padded_text():
    """Three texts of lengths 12, 10 and 9, right-padded, with their attention mask."""
    ids = torch.randint(3, 90, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 12, dtype=torch.long)
    for row, length in ((0, 12), (1, 10), (2, 9)):
        ids[row, length - 1] = SEP
        ids[row, length:] = PAD
        mask[row, length:] = 0
    return ids, mask


def itm(model, ids, mask, px, **kw):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=px, attention_mask=mask, **kw)


@pytest.mark.parametrize("vision_r", [0, 3])
def test_nothing_reduced_in_the_text_encoder_is_stock_bit_for_bit(vision_r):
    model = build()
    ids, mask = padded_text()
    px = pixels(3)
    apply_turbo(model, r=vision_r)
    reference = itm(model, ids, mask, px)
    reference_itc = itm(model, ids, mask, px, use_itm_head=False)
    apply_turbo(model, TurboConfig(r=vision_r, text_r=0, image_keep=[1.0, 1.0, 1.0]))
    assert type(model.text_encoder) is TurboBlipTextItmModel
    out = itm(model, ids, mask, px)
    assert torch.equal(out.itm_score, reference.itm_score)
    assert torch.equal(out.question_embeds, reference.question_embeds)
    assert torch.equal(itm(model, ids, mask, px, use_itm_head=False).itm_score, reference_itc.itm_score)


@pytest.mark.parametrize("vision_r", [0, 3])
def test_reduction_batched_equals_one_by_one_and_remove_restores(vision_r):
    model = build()
    ids, mask = padded_text()
    px = pixels(3)
    reference = itm(model, ids, mask, px).itm_score
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_turbo(model, TurboConfig(r=vision_r, text_r=2, image_keep=[1.0, 0.6, 0.3]))
    batched = itm(model, ids, mask, px)
    assert not torch.allclose(batched.itm_score, reference)
    assert batched.question_embeds.shape[1] == 12 - 2 * 3
    for row in range(3):
        length = int(mask[row].sum())
        alone = itm(model, ids[row : row + 1, :length], mask[row : row + 1, :length], px[row : row + 1])
        torch.testing.assert_close(alone.itm_score, batched.itm_score[row : row + 1], atol=1e-5, rtol=0)
    # image pruning alone: the last layer reads ceil(0.3 * N) image tokens, [CLS] among them
    apply_turbo(model, TurboConfig(r=vision_r, text_r=0, image_keep=[1.0, 0.6, 0.3]))
    with torch.no_grad():
        vision_tokens = model.vision_model(pixel_values=px).last_hidden_state
        text_out = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=vision_tokens)
    n = vision_tokens.shape[1]
    assert text_out.image_kept.shape == (3, -(-3 * n // 10)) and bool((text_out.image_kept[:, 0] == 0).all())
    assert text_out.last_hidden_state.shape[1] == 12
    remove_turbo(model)
    assert type(model) is BlipForImageTextRetrieval and type(model.text_encoder) is BlipTextModel
    assert not hasattr(model.text_encoder, "turbo_runtime")
    assert torch.equal(itm(model, ids, mask, px).itm_score, reference)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no Turbo patch to remove"):
        remove_turbo(model)


def test_text_merging_protects_cls_and_never_merges_padding():
    model = apply_turbo(build(), TurboConfig(text_r=2))
    ids, mask = padded_text()
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels(3)).last_hidden_state
        out = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image)
    assert bool((out.token_source[:, 0] == 0).all())  # [ENC] stays at position 0, alone
    assert bool((out.token_sizes[:, 0, 0] == 1).all())
    real = (out.token_sizes[..., 0] * out.token_mask).sum(1)
    assert torch.equal(real, mask.sum(1).float())  # real tokens only merge with real tokens
    assert out.image_kept.shape[1] == image.shape[1]  # no image pruning asked


def test_text_merging_refuses_left_padding():
    model = apply_turbo(build(), TurboConfig(text_r=2))
    ids, mask = padded_text()
    with pytest.raises(ValueError, match="right padding"):
        itm(model, ids.flip(1), mask.flip(1), pixels(3))


def test_image_scores_exclude_padding_queries_and_selection():
    probs = torch.zeros(1, 2, 3, 4)
    probs[0, :, 0, 1] = 1.0  # real query -> token 1
    probs[0, :, 2, 3] = 1.0  # padding query -> token 3 (ignored)
    scores = image_token_scores(probs, torch.tensor([[True, True, False]]))
    assert scores.argmax().item() == 1 and scores[0, 3] == 0
    assert select_image_tokens(scores, 2, protect_cls=True).tolist() == [[0, 1]]


def test_vision_and_text_in_one_patch_plan_and_context_manager():
    model = build()
    ids, mask = padded_text()
    px = pixels(3)
    reference = itm(model, ids, mask, px).itm_score
    settings = TurboConfig(r=3, text_r=1, image_keep=[1.0, 0.5, 0.5])
    with turbo(model, settings) as patched:
        out = itm(patched, ids, mask, px)
        plan = turbo_plan(patched, encoder_tokens={"text": 12})
    assert out.itm_score.shape == (3, 2) and torch.isfinite(out.itm_score).all()
    assert out.token_sizes.shape[1] == 17 - 2 * 3  # the vision tokens merged in the same patch
    assert plan["token_counts"] == [17, 14, 11]
    assert plan["text"]["schedule"] == [1, 1, 1] and plan["text"]["token_counts"] == [12, 11, 10, 9]
    assert plan["text"]["image_keep"] == [1.0, 0.5, 0.5] and plan["text"]["flops_fraction"] < 1
    assert type(model.text_encoder) is BlipTextModel
    assert torch.equal(itm(model, ids, mask, px).itm_score, reference)


def test_from_pretrained_save_and_reload_carry_the_text_settings(tmp_path):
    settings = TurboConfig(r=3, text_r=2, image_keep=[1.0, 0.6, 0.3])
    torch.manual_seed(0)
    model = TurboBlipForImageTextRetrieval(config(TurboBlipConfig, turbo_config=settings)).eval()
    assert type(model.text_encoder) is TurboBlipTextItmModel
    ids, mask = padded_text()
    px = pixels(3)
    expected = itm(model, ids, mask, px).itm_score
    model.save_pretrained(tmp_path)
    loaded = TurboBlipForImageTextRetrieval.from_pretrained(tmp_path).eval()
    assert loaded.config.turbo_config.text_r == 2 and loaded.config.turbo_config.image_keep == [1.0, 0.6, 0.3]
    assert type(loaded.text_encoder) is TurboBlipTextItmModel
    assert torch.equal(itm(loaded, ids, mask, px).itm_score, expected)
    other = TurboBlipForImageTextRetrieval.from_pretrained(tmp_path, turbo_config=TurboConfig(r=3)).eval()
    assert type(other.text_encoder) is BlipTextModel
    # Auto reload through the folder's remote code, in an interpreter where turbo_hf cannot be imported
    torch.save((ids, mask, px, expected), tmp_path / "tensors.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["turbo_hf"] = None
        import torch, transformers
        ids, mask, px, expected = torch.load({str(tmp_path / "tensors.pt")!r})
        model = transformers.AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            got = model(input_ids=ids, pixel_values=px, attention_mask=mask).itm_score
        print("REMOTE", type(model).__name__, type(model.text_encoder).__name__, torch.equal(got, expected))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboBlipForImageTextRetrieval TurboBlipTextItmModel True" in result.stdout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_keep": [1.0, 0.5]}, "image_keep` has 2 entries"),
        ({"image_keep": [1.0, 0.0, 0.0]}, "image_keep"),
        ({"image_keep": [1.0, 1.5, 1.0]}, "image_keep"),
        ({"image_keep": [0.5, 0.5, 0.5]}, "image_keep"),
        ({"image_keep": [1.0, 0.5, 0.8]}, "image_keep"),
        ({"text_r": -1}, "text_r"),
        ({"text_r": [1, 1]}, "text_r` has 2 entries"),
    ],
)
def test_impossible_settings_raise_at_apply_time(kwargs, message):
    model = build()
    apply_turbo(model, r=2)
    with pytest.raises(ValueError, match=message):
        apply_turbo(model, r=3, **kwargs)
    assert type(model.text_encoder) is BlipTextModel and model._turbo_patch.config.r == 2


def test_a_failure_midway_leaves_the_model_as_it_was(monkeypatch):
    model = build()
    ids, mask = padded_text()
    px = pixels(3)
    reference = itm(model, ids, mask, px).itm_score

    register = patching._register_outputs
    swapped = []

    def broken(module):  # fails on the text encoder, after the vision modules were swapped
        swapped.append(type(module))
        if isinstance(module, TurboBlipTextItmModel):
            raise RuntimeError("registration failed")
        register(module)

    monkeypatch.setattr(patching, "_register_outputs", broken)
    with pytest.raises(RuntimeError, match="registration failed"):
        apply_turbo(model, TurboConfig(r=3, text_r=2))
    monkeypatch.undo()
    assert len(swapped) > 1 and swapped[-1] is TurboBlipTextItmModel
    assert type(model) is BlipForImageTextRetrieval and type(model.text_encoder) is BlipTextModel
    assert not hasattr(model, "_turbo_patch") and not hasattr(model.text_encoder, "turbo_runtime")
    assert torch.equal(itm(model, ids, mask, px).itm_score, reference)


@pytest.mark.parametrize("name", ["blip-model", "vit"])
def test_families_without_an_itm_text_encoder_refuse_the_text_settings(name):
    from transformers import BlipModel, ViTConfig, ViTModel

    model = BlipModel(config()) if name == "blip-model" else ViTModel(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8))
    with pytest.raises(ValueError, match=r"`text_r` configures the ITM text encoder of BlipForImageTextRetrieval; "
                                         rf"{type(model).__name__} has none"):
        apply_turbo(model, TurboConfig(r=1, text_r=2))
    with pytest.raises(ValueError, match="`image_keep` configures"):
        apply_turbo(model, TurboConfig(image_keep=[1.0, 0.5]))
    assert not hasattr(model, "_turbo_patch")


def test_sdpa_text_attention_agrees_with_eager():
    model = build()
    ids, mask = padded_text()
    px = pixels(3)
    apply_turbo(model, TurboConfig(r=3, text_r=2, image_keep=[1.0, 0.6, 0.3]))
    eager = itm(model, ids, mask, px).itm_score
    model.text_encoder.config._attn_implementation = "sdpa"
    sdpa = itm(model, ids, mask, px).itm_score
    assert not torch.equal(sdpa, eager)  # another kernel ran
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
