"""`turbo_flex` (FlexAttention with the `log(size)` bias as a `score_mod`) against SDPA with the additive mask, on
CPU (FlexAttention's unfused reference there)."""

import pytest
import torch
import torch.nn.functional as F

from turbo_hf import TurboConfig, apply_turbo
from turbo_hf.modeling.turbo_attention import TURBO_FLEX, turbo_flex_attention
from turbo_hf.testing.family_tester import BY_NAME

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:flex_attention called")]


def _qkv(batch=2, heads=3, tokens=11, dim=8, kv_heads=None):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(batch, heads, tokens, dim, generator=generator)
    keys, values = (torch.randn(batch, kv_heads or heads, tokens, dim, generator=generator) for _ in range(2))
    return query, keys, values


@pytest.mark.parametrize("mask_kind", ["log_size", "padding_bool", "full_float", "none"])
def test_flex_equals_sdpa_with_the_additive_mask(mask_kind):
    query, keys, values = _qkv()
    batch, tokens = query.shape[0], query.shape[2]
    sizes = torch.randint(1, 6, (batch, tokens), generator=torch.Generator().manual_seed(1)).float()
    masks = {
        "log_size": sizes.log()[:, None, None, :],
        "padding_bool": (torch.arange(tokens) < torch.tensor([[tokens], [tokens - 4]]))[:, None, None, :],
        "full_float": torch.randn(batch, 1, tokens, tokens, generator=torch.Generator().manual_seed(2)),
        "none": None,
    }
    mask = masks[mask_kind]
    output, weights = turbo_flex_attention(None, query, keys, values, mask, scaling=0.3)
    expected = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.3)
    assert weights is None and output.shape == (batch, tokens, query.shape[1], query.shape[3])
    torch.testing.assert_close(output.transpose(1, 2), expected, atol=1e-5, rtol=1e-5)
    if mask_kind == "log_size":  # the bias changes the result: the check above could fail
        unbiased = F.scaled_dot_product_attention(query, keys, values, scale=0.3)
        assert not torch.allclose(output.transpose(1, 2), unbiased, atol=1e-3)


def test_flex_grouped_query_heads_and_dropout_refused():
    query, keys, values = _qkv(heads=4, kv_heads=2)
    output, _ = turbo_flex_attention(None, query, keys, values, None, scaling=0.25)
    expected = F.scaled_dot_product_attention(query, keys, values, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(output.transpose(1, 2), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="`turbo_flex` attention has no dropout"):
        turbo_flex_attention(None, query, keys, values, None, scaling=0.25, dropout=0.1)


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_turbo_model_on_turbo_flex_equals_sdpa_while_merging(name):
    """Through `attn_implementation`: ViT merges with the `log(size)` bias; BERT also carries its padding mask."""
    case = BY_NAME[name]
    merging = TurboConfig(**case.merging)
    rows = {}
    for attn in ("sdpa", TURBO_FLEX):
        model = case.build("sdpa")
        model.set_attn_implementation(attn)
        assert model.config._attn_implementation == attn
        apply_turbo(model, merging)
        rows[attn] = case.read(model, case.inputs(model, turbo=merging))
    torch.testing.assert_close(rows[TURBO_FLEX], rows["sdpa"], atol=1e-5, rtol=1e-4)
