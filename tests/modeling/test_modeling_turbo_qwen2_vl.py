"""Turbo for Qwen2-VL, Qwen2.5-VL and Qwen3-VL: image tokens reduced inside the language model, on tiny random models fed
`input_ids` + `pixel_values` + `image_grid_thw` directly (no processor), images of different sizes in one batch.

The reference for `reduction="prune"` is the STOCK model run without a cache, greedy, with the removed image tokens
masked as key columns in the layers after each reduction (forward pre-hooks on the stock layers, the selection read
from the Turbo prefill's cache state): it has the stock 3-D mRoPE positions of every token, so equal ids and logits
check that the kept tokens keep their positions, that `rope_deltas` carry the generated tokens on, and what dropping
changes (shorter hidden states and caches, gathered masks).
"""

import subprocess
import sys

import pytest
import torch
import transformers
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration, Qwen3VLForConditionalGeneration

from turbo_hf import TurboConfig, apply_turbo, remove_turbo
from turbo_hf.modeling.compat import cache_of
from turbo_hf.modeling.configuration_turbo_qwen2_vl import TurboQwen2_5_VLConfig, TurboQwen2VLConfig, TurboQwen3VLConfig
from turbo_hf.modeling.llm_decoders import (
    TurboQwen2_5_VLDecoderLayer, TurboQwen2VLDecoderLayer, TurboQwen3VLTextDecoderLayer,
)
from turbo_hf.modeling.llm_token_masks import STATE_ATTRIBUTE
from turbo_hf.modeling.modeling_turbo_qwen2_vl import (
    TurboQwen2_5_VLForConditionalGeneration,
    TurboQwen2VLForConditionalGeneration,
    TurboQwen3VLForConditionalGeneration,
)
from turbo_hf.testing.tiny_models import (
    QWEN_IMAGE_TOKEN, qwen2_5_vl_config, qwen2_vl_config, qwen3_vl_config, qwen_inputs, set_attention,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 4
FAMILIES = {
    "qwen2_vl": (qwen2_vl_config, Qwen2VLForConditionalGeneration, TurboQwen2VLConfig,
                 TurboQwen2VLForConditionalGeneration, TurboQwen2VLDecoderLayer),
    "qwen2_5_vl": (qwen2_5_vl_config, Qwen2_5_VLForConditionalGeneration, TurboQwen2_5_VLConfig,
                   TurboQwen2_5_VLForConditionalGeneration, TurboQwen2_5_VLDecoderLayer),
    "qwen3_vl": (qwen3_vl_config, Qwen3VLForConditionalGeneration, TurboQwen3VLConfig,
                 TurboQwen3VLForConditionalGeneration, TurboQwen3VLTextDecoderLayer),
}
GRIDS = [[(4, 4), (2, 4)], [(6, 4)]]  # sample 0: images of 4 and 2 tokens; sample 1: one of 6 tokens
TEXTS = [[7, 8, 9], [10, 11, 12, 13, 14, 15]]


@pytest.fixture(scope="module")
def weights():
    result = {}
    for name, (make, stock_class, *_) in FAMILIES.items():
        torch.manual_seed(0)
        result[name] = stock_class(make()).state_dict()
    return result


def stock_model(weights, name, attn="sdpa"):
    make, stock_class, *_ = FAMILIES[name]
    model = stock_class(set_attention(make(), attn))
    model.load_state_dict(weights[name])
    return model.eval()


def inputs(rows=(0, 1), grids=GRIDS, texts=TEXTS):
    return qwen_inputs([grids[i] for i in rows], [texts[i] for i in rows])


def one(batch, row):
    """Row `row` of a batch built by `inputs()`, without its padding (as a user would build it alone)."""
    alone = inputs(rows=(row,))
    patches = [sum(h * w for h, w in grids) for grids in GRIDS]
    start = sum(patches[:row])
    alone["pixel_values"] = batch["pixel_values"][start : start + patches[row]]
    return alone


def generate(model, batch, **kw):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kw)
    return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits)


def masked_reference(stock, batch, kept_columns, stages):
    """Greedy ids, step logits and prompt logits of the stock model without a cache, the image tokens not in
    `kept_columns[s]` masked as keys in the layers from `stages[s]` on."""
    prompt = batch["input_ids"].shape[1]
    keep = []
    for columns in kept_columns:
        flags = torch.zeros(columns.shape[0], prompt, dtype=torch.bool)
        keep.append(flags.scatter(1, columns.clamp_min(0), columns >= 0))
    sdpa = stock.config.text_config._attn_implementation == "sdpa"

    def hook(layer_idx):
        def pre_hook(module, args, kwargs):
            stage = sum(layer_idx >= s for s in stages) - 1
            if stage < 0:
                return None
            mask2d = state["attention_mask"].bool()
            length = mask2d.shape[1]
            allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & mask2d[:, None, :]
            extra = torch.ones(mask2d.shape[0], length - prompt, dtype=torch.bool)
            allowed = (allowed & torch.cat([keep[stage], extra], dim=1)[:, None, :])[:, None]
            kwargs["attention_mask"] = allowed if sdpa else torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
            return args, kwargs
        return pre_hook

    layers = stock.model.language_model.layers
    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    state = dict(batch)
    ids, step_logits = [], []
    try:
        with torch.no_grad():
            for step in range(NEW):
                logits = stock(**state, use_cache=False).logits
                if step == 0:
                    prompt_logits = logits
                step_logits.append(logits[:, -1])
                token = logits[:, -1].argmax(-1, keepdim=True)
                ids.append(token)
                for key, value in (("input_ids", token), ("attention_mask", torch.ones_like(token)),
                                   ("mm_token_type_ids", torch.zeros_like(token))):
                    state[key] = torch.cat([state[key], value], dim=1)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(ids, dim=1), torch.stack(step_logits), prompt_logits


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_no_reduction_is_the_stock_model_and_remove_turbo_restores_it(weights, name, attn):
    model = stock_model(weights, name, attn)
    classes = {key: type(module) for key, module in model.named_modules()}
    batch = inputs()
    with torch.no_grad():
        stock_logits = model(**batch).logits
    stock_ids = generate(model, batch)[0]
    apply_turbo(model)
    assert {type(layer) for layer in model.model.language_model.layers} == {FAMILIES[name][4]}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, stock_logits)
    assert torch.equal(generate(model, batch)[0], stock_ids)
    apply_turbo(model, llm_layers=[1], llm_keep=[0.5])
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits[:, -1], stock_logits[:, -1], atol=1e-4)
    remove_turbo(model)
    assert {key: type(module) for key, module in model.named_modules()} == classes
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, stock_logits)
    assert torch.equal(generate(model, batch)[0], stock_ids)


REFERENCE_CASES = [
    ("qwen2_vl", "sdpa", {"llm_layers": [1, 3], "llm_keep": [0.5, 0.25]}),
    ("qwen2_vl", "eager", {"llm_layers": [2], "llm_keep": [1], "llm_text_query": "all"}),
    ("qwen2_5_vl", "sdpa", {"llm_layers": [1, 2], "llm_keep": [3, 1], "mode": "semantic"}),
    ("qwen3_vl", "eager", {"llm_layers": [1, 3], "llm_keep": [0.5, 0.25]}),  # after its deepstack layer 0
]


@pytest.mark.parametrize("name,attn,settings", REFERENCE_CASES)
def test_prune_equals_the_masked_stock_model(weights, name, attn, settings):
    model = apply_turbo(stock_model(weights, name, attn), reduction="prune", **settings)
    batch = inputs()
    assert batch["attention_mask"][0, 0] == 0  # left padding
    ids, step_logits = generate(model, batch)
    with torch.no_grad():
        state = getattr(cache_of(model(**batch)), STATE_ATTRIBUTE)
    # variable counts: sample 0 keeps per image, sample 1 its one image; the shorter row has dead slots
    image = torch.where(state.columns[0] >= 0, batch["input_ids"].gather(1, state.columns[0].clamp_min(0)), -1)
    kept = (image == QWEN_IMAGE_TOKEN).sum(dim=1).tolist()
    first = settings["llm_keep"][0]
    expected = [sum(min(first, n) if isinstance(first, int) else max(1, int(first * n + 0.5)) for n in counts)
                for counts in ([4, 2], [6])]
    assert kept == expected
    reference_ids, reference_logits, prompt_logits = masked_reference(
        stock_model(weights, name, attn), batch, state.columns, settings["llm_layers"]
    )
    assert torch.equal(ids, reference_ids)
    torch.testing.assert_close(step_logits, reference_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        full = model(**batch).logits
    text = (batch["input_ids"] != QWEN_IMAGE_TOKEN) & batch["attention_mask"].bool()
    torch.testing.assert_close(full[text], prompt_logits[text], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_batched_generate_equals_one_by_one(weights, name, cache):
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    model = apply_turbo(stock_model(weights, name), llm_layers=[1, 3], llm_keep=[0.5, 0.25])
    batch = inputs()
    ids, logits = generate(model, batch, **kw)
    stock = stock_model(weights, name)
    generate(stock, batch)
    assert torch.equal(model.model.rope_deltas, stock.model.rope_deltas)  # the stock positions continue
    for row in range(2):
        single_ids, single_logits = generate(model, one(batch, row), **kw)
        assert torch.equal(single_ids, ids[row : row + 1])
        torch.testing.assert_close(single_logits, logits[:, row : row + 1], atol=1e-5, rtol=1e-5)
    if cache == "dynamic":
        static_ids, static_logits = generate(model, batch, cache_implementation="static")
        assert torch.equal(static_ids, ids)
        torch.testing.assert_close(static_logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["merge", "prune"])
def test_eager_equals_sdpa_and_caches_shorten(weights, reduction):
    results = []
    for attn in ("eager", "sdpa"):
        model = apply_turbo(stock_model(weights, "qwen2_vl", attn), reduction=reduction, llm_layers=[1, 3],
                            llm_keep=[3, 1])
        results.append(generate(model, inputs()))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
    batch = inputs()
    with torch.no_grad():
        cache = cache_of(model(**batch))
    length = batch["input_ids"].shape[1]
    lengths = [layer.keys.shape[2] for layer in cache.layers]
    # sample 0 (one pad) keeps 3 + 2 of its 4 + 2 image tokens then 1 + 1, sample 1 keeps 3 of 6 then 1: the longer
    # row sets the length, the other one has dead slots
    assert lengths == [length, length - 1, length - 1, length - 4]


def test_turbo_classes_round_trip_with_and_without_the_package(weights, tmp_path):
    turbo = {"llm_layers": [1], "llm_keep": [0.5]}
    script = ["import sys", 'sys.modules["turbo_hf"] = None', "import torch, transformers"]
    batch = inputs()
    for name, (make, _, config_class, turbo_class, _) in FAMILIES.items():
        model = turbo_class(make(config_class, turbo_config=turbo))
        model.load_state_dict(weights[name])
        model.eval()
        expected = generate(model, batch)[0]
        assert torch.equal(generate(apply_turbo(stock_model(weights, name), **turbo), batch)[0], expected)
        folder = tmp_path / name
        model.save_pretrained(folder)
        loaded = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
        assert type(loaded) is turbo_class and loaded.model.turbo_runtime.config.llm_keep == [0.5]
        assert torch.equal(generate(loaded, batch)[0], expected)
        code = {path.name for path in folder.glob("*.py")}
        assert {name for name in code if name.startswith("modeling_turbo_")} == {"modeling_turbo_qwen2_vl.py"}
        torch.save((dict(batch), expected), tmp_path / f"{name}.pt")
        script += [
            f"inputs, expected = torch.load({str(tmp_path / f'{name}.pt')!r})",
            f"model = transformers.AutoModelForImageTextToText.from_pretrained({str(folder)!r}, "
            "trust_remote_code=True).eval()",
            'assert type(model).__module__.startswith("transformers_modules"), type(model).__module__',
            f"new = model.generate(**inputs, max_new_tokens={NEW}, min_new_tokens={NEW}, do_sample=False)",
            'print("REMOTE", type(model).__name__, torch.equal(new[:, inputs["input_ids"].shape[1]:], expected))',
        ]
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboQwen2VLForConditionalGeneration True" in result.stdout
    assert "REMOTE TurboQwen2_5_VLForConditionalGeneration True" in result.stdout
    assert "REMOTE TurboQwen3VLForConditionalGeneration True" in result.stdout


def test_refused_settings_are_named_early(weights):
    model = stock_model(weights, "qwen2_vl")
    classes = {key: type(module) for key, module in model.named_modules()}
    with pytest.raises(ValueError, match=r"merging inside its vision tower \(`r`, `flops_ratio`\) is not supported"):
        apply_turbo(model, r=2)
    with pytest.raises(ValueError, match=r"names decoder layer\(s\) \[4\].* has 4 decoder layers"):
        apply_turbo(model, llm_layers=[1, 4], llm_keep=[0.5, 0.25])
    with pytest.raises(ValueError, match="only `reduction='prune'`"):
        apply_turbo(model, llm_layers=[1], llm_keep=[0])
    with pytest.raises(ValueError, match=r"shares must be floats in \(0, 1\), got 1.5"):
        TurboConfig(llm_layers=[1], llm_keep=[1.5])
    with pytest.raises(ValueError, match="all token counts per image .* or all shares"):
        TurboConfig(llm_layers=[1, 2], llm_keep=[8, 0.5])
    assert {key: type(module) for key, module in model.named_modules()} == classes
    apply_turbo(model, llm_layers=[1], llm_keep=[0.5])
    short = inputs()  # one image token too few: named before the language model runs
    first = int((short["input_ids"][0] == QWEN_IMAGE_TOKEN).nonzero()[0])
    short["input_ids"][0, first] = 9
    with pytest.raises(ValueError, match="visual tokens do not line up with its encoded images and videos"):
        model(**short)
    with pytest.raises(ValueError, match="chunked prefill"):
        generate(model, inputs(), prefill_chunk_size=8)
    # Qwen3-VL adds deepstack features after its first layers: no reduction before they are all in
    deep = Qwen3VLForConditionalGeneration(qwen3_vl_config())
    deep.config.vision_config.deepstack_visual_indexes = [0, 1]  # what `validate` reads
    with pytest.raises(ValueError, match="first 2 decoder layers, so image tokens can be reduced before layer 2"):
        apply_turbo(deep, llm_layers=[1], llm_keep=[0.5])
    apply_turbo(deep, llm_layers=[2], llm_keep=[0.5])
