"""Image tokens reduced INSIDE LLaVA's language model (`llm_layers`, `llm_keep`) on a tiny random LLaVA.

The reference for `reduction="prune"` runs the language model by hand without a cache, every step over the whole
sequence, with the same selection but the removed image tokens MASKED (as key columns) in the layers after each
reduction instead of dropped: generated ids must be equal, logits equal to ~1e-5. That checks what dropping
changes: shorter hidden states, original position ids, per-layer cache lengths, masks built from kept columns.
"""

import subprocess
import sys

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, MistralConfig

from test_modeling_turbo_llava import IMAGE_TOKEN_ID, PROMPTS, images, llava_config, processor_parts
from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo
from turbo_hf.modeling.compat import cache_of
from turbo_hf.modeling.modeling_turbo_llava import TurboLlavaConfig, TurboLlavaForConditionalGeneration
from turbo_hf.modeling.llm_decoders import TurboLlamaDecoderLayer, TurboLlamaModel
from turbo_hf.modeling.llm_token_masks import STATE_ATTRIBUTE, gather_mask, stage_key_columns
from turbo_hf.modeling.llm_token_reduction import (
    ReductionSettings, gather_tokens, keep_count, reduce_group_tokens, reduce_image_tokens,
)
from turbo_hf.modeling.llm_token_scores import decoder_layer_scores
from turbo_hf.modeling.processing_turbo_llava import TurboLlavaProcessor

NEW_TOKENS = 5
TEXT_LAYERS = 4
PER_IMAGE = 64  # 32 px, patch 4, [CLS] dropped


pytestmark = pytest.mark.usefixtures("one_thread")


def config(attn="sdpa", config_class=LlavaConfig, **kw):
    """`test_adapter_llava`'s tiny LLaVA (CLIP 3 layers, 64 image tokens per image) with a 4-layer Llama."""
    result = llava_config(config_class, attn=attn, **kw)
    result.text_config.num_hidden_layers = TEXT_LAYERS
    return result


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config()).state_dict()


def stock_model(weights, attn="sdpa"):
    model = LlavaForConditionalGeneration(config(attn))
    model.load_state_dict(weights)
    return model.eval()


def turbo_model(weights, attn="sdpa", **turbo):
    return apply_turbo(stock_model(weights, attn), **turbo)


def encode(model, indices=(0, 1)):
    processor = TurboLlavaProcessor(**processor_parts()).sync_with(model)
    return processor(
        images=[images(2)[i] for i in indices], text=[PROMPTS[i] for i in indices], return_tensors="pt", padding=True
    )


def generate(model, inputs, **kw):
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **kw,
        )
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits)


def masked_reference(model, inputs, new_tokens=NEW_TOKENS):
    """Greedy decoding without a cache; removed image tokens are masked out (key columns) in the layers >= K.

    The selection at each K is the library's (`decoder_layer_scores` + `reduce_image_tokens`) on the tokens still
    active, computed once on the prompt. Returns the new ids, the logits of each step and the prompt's logits.
    """
    llava = model.model
    lm = llava.language_model
    turbo = llava.turbo_runtime.config
    settings = ReductionSettings.from_config(turbo)
    stages = dict(zip(turbo.llm_layers, turbo.llm_keep))
    sdpa = lm.config._attn_implementation == "sdpa"
    with torch.no_grad():
        features = llava.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        first_count = features[0].shape[0]
        features = torch.cat(features)
        ids, mask2d = inputs["input_ids"], inputs["attention_mask"]
        batch, prompt = ids.shape
        active, step_logits, new = {}, [], []
        for step in range(new_tokens):
            length = ids.shape[1]
            is_image = ids == IMAGE_TOKEN_ID
            hidden = lm.embed_tokens(ids).masked_scatter(is_image[..., None], features)
            positions = (mask2d.cumsum(-1) - 1).masked_fill(mask2d == 0, 0)
            allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & mask2d.bool()[:, None, :]
            cos, sin = lm.rotary_emb(hidden, positions)
            current = torch.ones(batch, length, dtype=torch.bool)
            per_image = first_count
            for idx, layer in enumerate(lm.layers):
                if idx in stages:
                    if step == 0:
                        rows = torch.arange(length).expand(batch, length)[current].view(batch, -1)
                        sub_allowed = gather_mask(allowed[:, None], rows, rows)[:, 0]
                        sub_image = is_image.gather(1, rows)
                        sub = [gather_tokens(t, rows) for t in (hidden, cos, sin)]
                        metric, semantic = decoder_layer_scores(
                            layer, *sub, sub_allowed, None, sub_image, turbo.llm_text_query, settings.needs_semantic
                        )
                        ones = torch.ones(batch, rows.shape[1], 1)
                        counts = [[per_image] * (int(n) // per_image) for n in sub_image.sum(dim=1)]
                        keep = keep_count(stages[idx], first_count)
                        alive = torch.ones_like(sub_image)
                        keeps = [[keep] * len(c) for c in counts]
                        result = reduce_image_tokens(
                            sub[0], ones, sub_image, alive, counts, keeps, metric, semantic, settings, idx
                        )
                        kept = rows.gather(1, result.keep_positions)
                        active[idx] = torch.zeros(batch, length, dtype=torch.bool).scatter(1, kept, True)
                        per_image = keep
                    extra = torch.ones(batch, length - prompt, dtype=torch.bool)
                    current = torch.cat([active[idx], extra], dim=1)
                layer_allowed = (allowed & current[:, None, :])[:, None]
                mask = layer_allowed if sdpa else torch.where(layer_allowed, 0.0, torch.finfo(torch.float32).min)
                hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
            logits = model.lm_head(lm.norm(hidden))
            if step == 0:
                prompt_logits = logits
            step_logits.append(logits[:, -1])
            token = logits[:, -1].argmax(-1, keepdim=True)
            new.append(token)
            ids = torch.cat([ids, token], dim=1)
            mask2d = torch.cat([mask2d, torch.ones_like(token)], dim=1)
    return torch.cat(new, dim=1), torch.stack(step_logits), prompt_logits


def text_positions(inputs):
    return (inputs["input_ids"] != IMAGE_TOKEN_ID) & inputs["attention_mask"].bool()


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{}, {"r": 0}, {"r": 8}])
def test_off_is_todays_model(weights, settings):
    """`llm_layers=None`: the language model is swapped to the Turbo class but runs the stock forward."""
    stock = stock_model(weights)
    inputs = encode(apply_turbo(stock_model(weights), **settings))
    if not settings.get("r"):
        reference_logits = stock(**inputs).logits.detach()
        reference_ids = generate(stock, inputs)[0]
    else:  # today's Turbo model (vision merging) without the language model class swap
        today = turbo_model(weights, **settings)
        today.model.language_model.__class__ = type(stock.model.language_model)
        reference_logits, reference_ids = today(**inputs).logits.detach(), generate(today, inputs)[0]
    model = turbo_model(weights, **settings)
    assert type(model.model.language_model) is TurboLlamaModel
    assert {type(layer) for layer in model.model.language_model.layers} == {TurboLlamaDecoderLayer}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference_logits)
    assert torch.equal(generate(model, inputs)[0], reference_ids)
    remove_turbo(model)
    assert type(model.model.language_model).__name__ == "LlamaModel"


REFERENCE_CASES = [
    ("eager", {"llm_layers": [1, 3], "llm_keep": [24, 10]}),
    ("sdpa", {"llm_layers": [1, 3], "llm_keep": [24, 10]}),
    ("sdpa", {"llm_layers": [2], "llm_keep": [7], "llm_text_query": "all"}),
    ("eager", {"llm_layers": [1, 2], "llm_keep": [40, 0], "mode": "semantic"}),
    ("sdpa", {"llm_layers": [1, 3], "llm_keep": [30, 12], "mode": "random", "seed": 3}),
    ("sdpa", {"llm_layers": [1, 3], "llm_keep": [24, 10], "r": 8}),  # vision tower prunes too (64 -> 48)
]


@pytest.mark.parametrize("attn,settings", REFERENCE_CASES)
def test_prune_equals_the_masking_reference(weights, attn, settings):
    model = turbo_model(weights, attn, reduction="prune", **settings)
    inputs = encode(model)
    assert inputs["attention_mask"][0, 0] == 0  # batch 2, different prompts, left padding
    ids, step_logits = generate(model, inputs)
    reference_ids, reference_logits, prompt_logits = masked_reference(model, inputs)
    assert torch.equal(ids, reference_ids)
    torch.testing.assert_close(step_logits, reference_logits, atol=1e-5, rtol=1e-5)
    # a plain forward: the output is restored to the input length, the text positions are the reference's
    with torch.no_grad():
        full = model(**inputs).logits
    text = text_positions(inputs)
    torch.testing.assert_close(full[text], prompt_logits[text], atol=1e-5, rtol=1e-5)
    # one sample alone (no padding: SDPA's causal shortcut in the reduced layers too) gives its batched result
    single = encode(model, indices=(1,))
    assert torch.equal(generate(model, single)[0], ids[1:])
    assert torch.equal(masked_reference(model, single)[0], ids[1:])


def test_two_images_per_sample_are_reduced_image_by_image(weights):
    model = turbo_model(weights, "eager", reduction="prune", llm_layers=[1, 3], llm_keep=[24, 10])
    processor = TurboLlavaProcessor(**processor_parts()).sync_with(model)
    texts = ["USER: <image> w1 <image> What is this ? ASSISTANT:", "USER: <image> <image> w3 w4 w5 ? ASSISTANT:"]
    inputs = processor(images=images(4), text=texts, return_tensors="pt", padding=True)
    ids, step_logits = generate(model, inputs)
    reference_ids, reference_logits, _ = masked_reference(model, inputs)
    assert torch.equal(ids, reference_ids)
    torch.testing.assert_close(step_logits, reference_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        state = getattr(cache_of(model(**inputs)), STATE_ATTRIBUTE)
    image = inputs["input_ids"].gather(1, state.columns[1]) == IMAGE_TOKEN_ID
    assert image.sum(dim=1).tolist() == [20, 20]  # 10 per image


def test_reduction_changes_the_model_and_shortens_the_caches(weights):
    stock = stock_model(weights)
    model = turbo_model(weights, reduction="prune", llm_layers=[1, 3], llm_keep=[16, 4])
    inputs = encode(model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        stock_out = stock(**inputs)
    length = inputs["input_ids"].shape[1]
    assert out.logits.shape == stock_out.logits.shape
    assert not torch.allclose(out.logits[:, -1], stock_out.logits[:, -1], atol=1e-3)
    # hidden states: embeddings, layer 0 at full length, layers 1-2 after keeping 16 of 64, layer 3 after keeping 4
    lengths = [h.shape[1] for h in out.hidden_states]
    assert lengths == [length, length, length - 48, length - 48, length]  # the last one is restored
    cache = cache_of(out)
    assert [layer.keys.shape[2] for layer in cache.layers] == [length, length - 48, length - 48, length - 60]
    state = getattr(cache, STATE_ATTRIBUTE)
    assert state.layers == [1, 3] and state.prefill_length == length
    for columns, removed in zip(state.columns, (48, 60)):
        assert columns.shape == (2, length - removed)
        kept_ids = inputs["input_ids"].gather(1, columns)
        assert ((kept_ids == IMAGE_TOKEN_ID).sum(dim=1) == PER_IMAGE - removed).all()
        assert (columns.diff(dim=1) > 0).all()  # kept in order
    # the modes choose differently
    chosen = {}
    for mode in ("turbo", "tome", "semantic", "random"):
        apply_turbo(model, reduction="prune", llm_layers=[1], llm_keep=[16], mode=mode, alpha=1.0)
        with torch.no_grad():
            chosen[mode] = getattr(cache_of(model(**inputs)), STATE_ATTRIBUTE).columns[0]
    assert len({tuple(c.flatten().tolist()) for c in chosen.values()}) == 4


def test_shares_keep_the_rounded_share_of_each_image(weights):
    """`llm_keep` floats: 0.375 and 0.15 of LLaVA's 64 tokens per image are 24 and 10 (rounded)."""
    inputs = encode(stock_model(weights))
    counts = generate(turbo_model(weights, llm_layers=[1, 3], llm_keep=[24, 10]), inputs)
    shares = generate(turbo_model(weights, llm_layers=[1, 3], llm_keep=[0.375, 0.15]), inputs)
    assert torch.equal(shares[0], counts[0]) and torch.equal(shares[1], counts[1])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_merge_runs_batched_equals_one_by_one(weights, cache):
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    model = turbo_model(weights, llm_layers=[1, 3], llm_keep=[20, 6], llm_text_query="all")
    inputs = encode(model)
    ids, logits = generate(model, inputs, **kw)
    for row in range(2):
        single_ids, single_logits = generate(model, encode(model, indices=(row,)), **kw)
        assert torch.equal(single_ids, ids[row : row + 1])
        torch.testing.assert_close(single_logits, logits[:, row : row + 1], atol=1e-5, rtol=1e-5)
    if cache == "dynamic":
        # beam search: the cache is reordered within each sample's beams, whose reductions are identical
        beams = generate(model, inputs, num_beams=2)[0]
        singles = [generate(model, encode(model, indices=(row,)), num_beams=2)[0] for row in range(2)]
        assert torch.equal(beams, torch.cat(singles))


@pytest.mark.parametrize("reduction", ["prune", "merge"])
def test_static_cache_equals_dynamic_cache(weights, reduction):
    model = turbo_model(weights, "eager", r=8, reduction=reduction, llm_layers=[1, 2], llm_keep=[30, 9])
    inputs = encode(model)
    ids, logits = generate(model, inputs)
    static_ids, static_logits = generate(model, inputs, cache_implementation="static")
    assert torch.equal(static_ids, ids)
    torch.testing.assert_close(static_logits, logits, atol=1e-5, rtol=1e-5)


def test_with_vision_merging_sizes_carry_into_the_language_model(weights):
    """Both on: vision merging (64 -> 48 image tokens) and merging in the LLM; `log(size)` stays a key bias."""
    model = turbo_model(weights, r=8, llm_layers=[1, 3], llm_keep=[20, 6])
    inputs = encode(model)
    assert (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(dim=1).tolist() == [48, 48]
    with torch.no_grad():
        out = model(**inputs)
    state = getattr(cache_of(out), STATE_ATTRIBUTE)
    for columns, bias, keep in zip(state.columns, state.key_bias, (20, 6)):
        image = inputs["input_ids"].gather(1, columns) == IMAGE_TOKEN_ID
        sizes = bias.exp()
        assert (image.sum(dim=1) == keep).all()
        # every patch counted once: the kept image tokens' sizes add up to the 64 patches; text has size 1
        torch.testing.assert_close((sizes * image).sum(dim=1), torch.full((2,), 64.0))
        assert torch.equal(sizes[~image], torch.ones_like(sizes[~image]))
    ids, logits = generate(model, inputs)
    for row in range(2):
        single_ids, single_logits = generate(model, encode(model, indices=(row,)))
        assert torch.equal(single_ids, ids[row : row + 1])
        torch.testing.assert_close(single_logits, logits[:, row : row + 1], atol=1e-5, rtol=1e-5)
    # without proportional attention no bias is kept
    apply_turbo(model, r=8, llm_layers=[1, 3], llm_keep=[20, 6], proportional_attention=False)
    with torch.no_grad():
        assert getattr(cache_of(model(**inputs)), STATE_ATTRIBUTE).key_bias == [None, None]


def test_language_model_settings_go_through_the_one_patch_path(weights):
    """`llm_layers`/`llm_keep` are TurboConfig settings: `apply_turbo`, `remove_turbo` and `turbo()` as for vision."""
    model = stock_model(weights)
    inputs = encode(model)
    stock_classes = {name: type(module) for name, module in model.named_modules()}
    with torch.no_grad():
        stock_logits = model(**inputs).logits
    stock_ids = generate(model, inputs)[0]

    assert apply_turbo(model, TurboConfig(llm_layers=[2], llm_keep=[12])) is model
    assert type(model.model.language_model) is TurboLlamaModel
    assert {type(layer) for layer in model.model.language_model.layers} == {TurboLlamaDecoderLayer}
    with torch.no_grad():
        reduced = model(**inputs).logits
    assert not torch.allclose(reduced[:, -1], stock_logits[:, -1], atol=1e-3)  # 52 of 64 image tokens left
    remove_turbo(model)
    assert {name: type(module) for name, module in model.named_modules()} == stock_classes
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock_logits)
    assert torch.equal(generate(model, inputs)[0], stock_ids)

    with turbo(model, llm_layers=[2], llm_keep=[12]) as patched:
        assert patched is model and type(model.model.language_model) is TurboLlamaModel
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, reduced)
    assert {name: type(module) for name, module in model.named_modules()} == stock_classes
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock_logits)
    assert torch.equal(generate(model, inputs)[0], stock_ids)


REMOTE_GENERATE = """
import sys
sys.modules["turbo_hf"] = None  # any `import turbo_hf` now fails
import torch, transformers
inputs, expected = torch.load({tensors!r})
model = transformers.AutoModelForImageTextToText.from_pretrained({folder!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    new = model.generate(**inputs, max_new_tokens={new}, min_new_tokens={new}, do_sample=False)
print("REMOTE", type(model.model.language_model).__name__, torch.equal(new[:, inputs["input_ids"].shape[1]:], expected))
"""


def test_turbo_class_round_trip(weights, tmp_path):
    turbo = {"r": 4, "llm_layers": [2], "llm_keep": [10]}
    model = TurboLlavaForConditionalGeneration(config(config_class=TurboLlavaConfig, turbo_config=turbo))
    model.load_state_dict(weights)
    model.eval()
    inputs = encode(model)
    expected = generate(model, inputs)[0]
    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    loaded = TurboLlavaForConditionalGeneration.from_pretrained(folder).eval()
    assert loaded.model.turbo_runtime.config.llm_keep == [10]
    assert torch.equal(generate(loaded, inputs)[0], expected)
    assert torch.equal(generate(turbo_model(weights, **turbo), inputs)[0], expected)  # = a patched stock model

    # the folder carries the LLaVA files, the CLIP tower's and the core: no other family's
    code = {path.name for path in folder.glob("*.py")}
    assert {"modeling_turbo_llava.py", "llm_decoder_layers.py", "llm_decoders.py", "llm_token_reduction.py",
            "llm_token_scores.py", "llm_token_masks.py", "modeling_turbo_clip.py"} <= code
    assert {name for name in code if name.startswith("modeling_turbo_")} == {"modeling_turbo_llava.py",
                                                                              "modeling_turbo_clip.py"}
    assert not [name for name in code if any(other in name for other in ("blip", "siglip", "bert", "vit", "dino"))]
    # and runs without the package (trust_remote_code in an interpreter where turbo_hf cannot be imported)
    torch.save((dict(inputs), expected), tmp_path / "tensors.pt")
    script = REMOTE_GENERATE.format(tensors=str(tmp_path / "tensors.pt"), folder=str(folder), new=NEW_TOKENS)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboLlamaModel True" in result.stdout


def test_impossible_settings_are_refused(weights):
    def turbo_class(**turbo):
        return TurboLlavaForConditionalGeneration(config(config_class=TurboLlavaConfig, turbo_config=turbo))

    def patched_stock_forward(**turbo):  # refused by apply_turbo (validate hook) or at the first forward
        model = stock_model(weights)
        inputs = encode(model)
        apply_turbo(model, **turbo)
        model(**inputs)

    deep = dict(llm_layers=[1, 4], llm_keep=[8, 4])
    for build in (turbo_class, patched_stock_forward):
        with pytest.raises(ValueError, match=r"names decoder layer\(s\) \[4\].* has 4 decoder layers"):
            build(**deep)
        with pytest.raises(ValueError, match="keeps 65 image tokens per image after decoder layer 1, but only 64"):
            build(llm_layers=[1], llm_keep=[65])
    with pytest.raises(ValueError, match="only 48 per image enter that layer"):
        turbo_class(r=8, llm_layers=[1], llm_keep=[50])
    with pytest.raises(ValueError, match="only `reduction='prune'`"):
        turbo_class(llm_layers=[1], llm_keep=[0])
    with pytest.raises(ValueError, match="decoder layer indices >= 1"):
        TurboConfig(llm_layers=[0], llm_keep=[4])
    with pytest.raises(ValueError, match="must not increase"):
        TurboConfig(llm_layers=[1, 2], llm_keep=[4, 8])

    # a language model that is not Llama-style
    mistral = config(config_class=TurboLlavaConfig)
    text = mistral.text_config.to_dict()
    text.update(model_type="mistral", sliding_window=None)
    mistral.text_config = MistralConfig(**{k: v for k, v in text.items() if k != "model_type"})
    mistral.turbo_config = TurboConfig(llm_layers=[1], llm_keep=[8])
    with pytest.raises(ValueError, match=r"supports the decoders \['LlamaModel'\].*MistralModel"):
        TurboLlavaForConditionalGeneration(mistral)

    # chunked prefill would split the prompt the text queries come from
    model = turbo_model(weights, llm_layers=[1], llm_keep=[8])
    inputs = encode(model)
    for chunk in (16, 72):  # 72: both images in the first chunk, the second chunk brings more prompt
        with pytest.raises(ValueError, match="chunked prefill"):
            generate(model, inputs, prefill_chunk_size=chunk)


def test_model_agnostic_pieces():
    torch.manual_seed(0)
    hidden, metric = torch.randn(3, 40, 8), torch.nn.functional.normalize(torch.randn(3, 40, 4), dim=-1)
    size, semantic = torch.rand(3, 40, 1) + 0.5, torch.rand(3, 40)
    for reduction in ("merge", "prune"):
        settings = ReductionSettings("turbo", 1.0, "length", reduction, 0)
        out, out_size, kept, slot = reduce_group_tokens(hidden, size, metric, semantic, 7, settings)
        assert out.shape == (3, 7, 8) and kept.shape == (3, 7) and (kept.diff(dim=1) > 0).all()
        assert torch.equal(out_size, size.gather(1, kept[..., None])) == (reduction == "prune")
        if reduction == "merge":  # every token lands in one kept token; sizes add up; values are size-weighted means
            assert (slot >= 0).all()
            torch.testing.assert_close(out_size.sum(dim=1), size.sum(dim=1))
            expected = torch.zeros(3, 7, 8).scatter_add(1, slot[..., None].expand(-1, -1, 8), hidden * size)
            torch.testing.assert_close(out, expected / out_size)
        else:  # kept tokens are themselves, the others are gone
            assert ((slot >= 0).sum(dim=1) == 7).all()
            torch.testing.assert_close(out, gather_tokens(hidden, kept))
    # a reduced layer's key slots: 3 kept prefill tokens, then the tokens after the prefill (full columns 10, 11,
    # ...); a static cache of 8 slots while the full cache has 12 columns leaves slots that map to nothing
    columns = stage_key_columns(torch.tensor([[0, 4, 9]]), prefill_length=10, kv_length=8, full_kv_length=12)
    assert columns.tolist() == [[0, 4, 9, 10, 11, -1, -1, -1]]
    allowed = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    mask = gather_mask(allowed, torch.tensor([[9]]), columns)
    assert mask[0, 0].tolist() == [[True, True, True, False, False, False, False, False]]
