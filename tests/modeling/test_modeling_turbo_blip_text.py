"""Turbo in BLIP's ITM text encoder: text merging (padding never merges, [CLS] protected) and cross-modal image
pruning (image tokens ranked by the cross-attention they receive), on tiny random retrieval models."""

import pytest
import torch
from transformers import BlipConfig, BlipForImageTextRetrieval
from transformers.models.blip.modeling_blip_text import BlipTextModel

from turbo_hf import apply_turbo
from turbo_hf.modeling.modeling_turbo_blip import TurboBlipConfig, TurboBlipForImageTextRetrieval
from turbo_hf.modeling.modeling_turbo_blip_text import (
    TurboBlipTextItmModel,
    apply_blip_text_turbo,
    image_token_scores,
    remove_blip_text_turbo,
    select_image_tokens,
)

IMAGE, PATCH = 32, 8  # 16 patches + [CLS] = 17 image tokens
SEP, PAD = 98, 0
TOWER = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def config(config_class=BlipConfig, **kw):
    text = dict(TOWER, vocab_size=99, num_hidden_layers=3, max_position_embeddings=64, initializer_range=0.3,
                bos_token_id=97, sep_token_id=SEP, eos_token_id=2, pad_token_id=PAD)
    vision = dict(TOWER, num_hidden_layers=2, image_size=IMAGE, patch_size=PATCH, initializer_range=0.2)
    return config_class(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16,
                        initializer_range=0.3, **kw)


def build(turbo_vision=False, seed=0):
    torch.manual_seed(seed)
    if turbo_vision:
        return TurboBlipForImageTextRetrieval(config(TurboBlipConfig, turbo_config={"r": 3})).eval()
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


@pytest.mark.parametrize("turbo_vision", [False, True])
def test_nothing_reduced_is_stock_bit_for_bit(turbo_vision):
    model = build(turbo_vision)
    ids, mask = padded_text()
    px = pixels(3)
    reference = itm(model, ids, mask, px)
    apply_blip_text_turbo(model, text_r=0, image_keep=[1.0, 1.0, 1.0])
    assert type(model.text_encoder) is TurboBlipTextItmModel
    out = itm(model, ids, mask, px)
    assert torch.equal(out.itm_score, reference.itm_score)
    assert torch.equal(out.question_embeds, reference.question_embeds)
    itc = itm(model, ids, mask, px, use_itm_head=False)
    assert torch.equal(itc.itm_score, itm(remove_blip_text_turbo(model), ids, mask, px, use_itm_head=False).itm_score)


@pytest.mark.parametrize("turbo_vision", [False, True])
def test_reduction_batched_equals_one_by_one_and_remove_restores(turbo_vision):
    model = build(turbo_vision)
    ids, mask = padded_text()
    px = pixels(3)
    reference = itm(model, ids, mask, px).itm_score
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_blip_text_turbo(model, text_r=2, image_keep=[1.0, 0.6, 0.3])
    batched = itm(model, ids, mask, px)
    assert not torch.allclose(batched.itm_score, reference)
    assert batched.question_embeds.shape[1] == 12 - 2 * 3
    for row in range(3):
        length = int(mask[row].sum())
        alone = itm(model, ids[row : row + 1, :length], mask[row : row + 1, :length], px[row : row + 1])
        torch.testing.assert_close(alone.itm_score, batched.itm_score[row : row + 1], atol=1e-5, rtol=0)
    # image pruning alone: the last layer reads ceil(0.3 * N) image tokens, [CLS] among them
    apply_blip_text_turbo(model, text_r=0, image_keep=[1.0, 0.6, 0.3])
    vision_tokens = model.vision_model(pixel_values=px).last_hidden_state
    text_out = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=vision_tokens)
    n = vision_tokens.shape[1]
    assert text_out.image_kept.shape == (3, -(-3 * n // 10)) and bool((text_out.image_kept[:, 0] == 0).all())
    assert text_out.last_hidden_state.shape[1] == 12
    remove_blip_text_turbo(model)
    assert type(model.text_encoder) is BlipTextModel
    assert torch.equal(itm(model, ids, mask, px).itm_score, reference)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_text_merging_protects_cls_and_never_merges_padding():
    model = apply_blip_text_turbo(build(), text_r=2)
    ids, mask = padded_text()
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels(3)).last_hidden_state
        out = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image)
    assert bool((out.token_source[:, 0] == 0).all())  # [ENC] stays at position 0, alone
    assert bool((out.token_sizes[:, 0, 0] == 1).all())
    real = (out.token_sizes[..., 0] * out.token_mask).sum(1)
    assert torch.equal(real, mask.sum(1).float())  # real tokens only merge with real tokens
    assert out.image_kept.shape[1] == image.shape[1]  # no image pruning asked


def test_image_scores_exclude_padding_queries_and_selection():
    probs = torch.zeros(1, 2, 3, 4)
    probs[0, :, 0, 1] = 1.0  # real query -> token 1
    probs[0, :, 2, 3] = 1.0  # padding query -> token 3 (ignored)
    scores = image_token_scores(probs, torch.tensor([[True, True, False]]))
    assert scores.argmax().item() == 1 and scores[0, 3] == 0
    assert select_image_tokens(scores, 2, protect_cls=True).tolist() == [[0, 1]]


def test_stacks_with_vision_turbo_applied_after():
    model = apply_blip_text_turbo(build(), text_r=1, image_keep=[1.0, 0.5, 0.5])
    ids, mask = padded_text()
    apply_turbo(model, r=3)  # vision merging on top: the log(size) bias follows the kept image tokens
    out = itm(model, ids, mask, pixels(3))
    assert out.itm_score.shape == (3, 2) and torch.isfinite(out.itm_score).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_keep": [1.0, 0.5]}, "image_keep"),
        ({"image_keep": [1.0, 0.0, 0.0]}, "image_keep"),
        ({"image_keep": [1.0, 1.5, 1.0]}, "image_keep"),
        ({"image_keep": [0.5, 0.5, 0.5]}, "image_keep"),
        ({"image_keep": [1.0, 0.5, 0.8]}, "image_keep"),
        ({"text_r": -1}, "r"),
        ({"text_r": [1, 1]}, "r"),
    ],
)
def test_impossible_settings_raise_at_apply_time(kwargs, message):
    model = build()
    with pytest.raises(ValueError, match=message):
        apply_blip_text_turbo(model, **kwargs)
    assert type(model.text_encoder) is BlipTextModel
