"""Turbo for LLaVA-1.5 on a tiny random model: stock equality at r=0, merged image tokens with proportional
attention in the language model (prefill and every cached decoding step), batching with left padding,
attention backends, the processor's placeholder count, Hub folders with and without the package."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from turbo_hf import TurboConfig, apply_turbo, remove_turbo, turbo_plan
from turbo_hf.modeling.compat import image_features_of
from turbo_hf.modeling.modeling_turbo_llava import TurboLlavaConfig, TurboLlavaForConditionalGeneration, TurboLlavaModel
from turbo_hf.modeling.llava_token_counts import clip_layer_cost, image_token_count
from turbo_hf.modeling.processing_turbo_llava import TurboLlavaProcessor


IMAGE_TOKEN_ID = 4
WORDS = [f"w{i}" for i in range(100)] + ["USER:", "ASSISTANT:", "What", "is", "this", "?"]
PROMPTS = [
    "USER: <image> What is this ? ASSISTANT:",
    "USER: <image> w1 w2 w3 w4 w5 w6 w7 w8 w9 ? ASSISTANT:",
]
NEW_TOKENS = 5


def tokenizer():
    vocab = {token: i for i, token in enumerate(["<unk>", "<pad>", "<s>", "</s>", "<image>"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


def processor_parts() -> dict:
    return dict(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer(),
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def llava_config(config_class=LlavaConfig, attn="sdpa", **kw):
    """CLIP tower: hidden 32, 3 layers, 32 px, patch 4 (64 patches + [CLS]); text: a tiny Llama."""
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        projection_dim=16,
    )
    text = dict(
        model_type="llama",
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = config_class(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, pad_token_id=1, **kw)
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    return config


def images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((36 + 6 * i, 40, 3)) * 255).astype("uint8")) for i in range(n)]


def encode(processor, indices=(0, 1)) -> dict:
    return processor(
        images=[images(2)[i] for i in indices],
        text=[PROMPTS[i] for i in indices],
        return_tensors="pt",
        padding=True,
    )


def generate(model, inputs, **kw):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, **kw)
    if isinstance(out, torch.Tensor):
        return out[:, inputs["input_ids"].shape[1] :]
    return out


def logits(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw).logits


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llava") / "stock"
    LlavaForConditionalGeneration(llava_config()).save_pretrained(folder)
    return folder


def load_turbo(folder, attn="sdpa", **turbo):
    model = TurboLlavaForConditionalGeneration.from_pretrained(
        folder, attn_implementation=attn, turbo_config=TurboConfig(**turbo)
    )
    return model.eval()


def synced(model) -> TurboLlavaProcessor:
    return TurboLlavaProcessor(**processor_parts()).sync_with(model)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_stock_checkpoint_loads_and_r0_is_the_stock_model(stock_folder, attn):
    stock = LlavaForConditionalGeneration.from_pretrained(stock_folder, attn_implementation=attn).eval()
    inputs = encode(LlavaProcessor(**processor_parts()))
    reference, reference_ids = logits(stock, inputs), generate(stock, inputs)

    model, info = TurboLlavaForConditionalGeneration.from_pretrained(
        stock_folder, attn_implementation=attn, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    model.eval()
    turbo_inputs = encode(synced(model))
    assert torch.equal(turbo_inputs["input_ids"], inputs["input_ids"])
    assert torch.equal(logits(model, inputs), reference)
    assert torch.equal(generate(model, inputs), reference_ids)

    # a patched stock model, the same; remove_turbo gives the stock classes back
    apply_turbo(stock, r=0)
    assert type(stock.model).__name__ == "TurboLlavaModel"
    assert torch.equal(logits(stock, inputs), reference)
    assert torch.equal(generate(stock, inputs), reference_ids)
    apply_turbo(stock, r=8)
    assert synced(stock).num_image_tokens(32, 32) == 48
    remove_turbo(stock)
    assert not any(type(m).__name__.startswith("Turbo") for m in stock.modules())
    assert torch.equal(logits(stock, inputs), reference)


def test_merged_tokens_reach_the_language_model(stock_folder):
    model = load_turbo(stock_folder, r=8)
    processor = synced(model)
    # vision_feature_layer=-2: Turbo runs in the 2 layers that feed the projector, the last layer is skipped
    assert turbo_plan(model)["token_counts"] == [65, 57, 49]
    assert processor.num_image_tokens(32, 32) == model.model.num_image_tokens() == image_token_count(model.config) == 48
    inputs = encode(processor)
    assert (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(dim=1).tolist() == [48, 48]
    assert inputs["attention_mask"][0].tolist()[:7] == [0] * 6 + [1]  # the shorter prompt is left-padded
    with torch.no_grad():
        out = model(**inputs)
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
    assert image_features_of(out).shape == (96, 32)
    assert [f.shape[0] for f in features.pooler_output] == [48, 48]
    sizes = torch.stack(features.deepstack_features[0])  # the patches each image feature stands for
    assert sizes.shape == (2, 48, 1)
    torch.testing.assert_close(sizes.sum(dim=1), torch.full((2, 1), 64.0))  # [CLS] dropped, each patch once
    with pytest.raises(ValueError, match="get_image_features"):
        model.model.vision_tower(inputs["pixel_values"])
    # the stock base model, patched, is the inner model of the Turbo class
    base = apply_turbo(LlavaModel.from_pretrained(stock_folder).eval(), r=8)
    with torch.no_grad():
        torch.testing.assert_close(base(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)


def reference_logits(model, inputs, with_bias=True):
    """The language model run by hand on a 4D mask built here: causal, padding, + log(size) on image keys."""
    llava = model.model
    with torch.no_grad():
        features = llava.get_image_features(pixel_values=inputs["pixel_values"])
        embeds = llava.get_input_embeddings()(inputs["input_ids"])
        image = inputs["input_ids"] == IMAGE_TOKEN_ID
        embeds = embeds.masked_scatter(image[..., None], torch.cat(features.pooler_output))
        bias = torch.zeros(image.shape)
        bias[image] = torch.cat(features.deepstack_features[0]).flatten().log()
        length = image.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = causal[None] & inputs["attention_mask"].bool()[:, None, :]
        mask = torch.where(allowed, bias[:, None, :] if with_bias else 0.0, torch.finfo(torch.float32).min)
        hidden = llava.language_model(inputs_embeds=embeds, attention_mask=mask[:, None]).last_hidden_state
        return model.lm_head(hidden)


def test_language_model_gets_the_log_size_bias(stock_folder):
    model = load_turbo(stock_folder, attn="eager", r=8)
    inputs = encode(synced(model))
    got = logits(model, inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], reference_logits(model, inputs)[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[real], reference_logits(model, inputs, with_bias=False)[real], atol=1e-3)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_kv_cache_carries_the_bias_through_generate(stock_folder, attn):
    model = load_turbo(stock_folder, attn=attn, r=8)
    inputs = encode(synced(model))
    out = generate(model, inputs, output_logits=True, return_dict_in_generate=True)
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
    # every cached decoding step equals a full forward without a cache over the prompt and the tokens so far
    for step in range(NEW_TOKENS):
        ids = torch.cat([inputs["input_ids"], new_tokens[:, :step]], dim=1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(new_tokens[:, :step])], dim=1)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        full = logits(
            model,
            dict(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]),
            position_ids=positions,
            use_cache=False,
        )[:, -1]
        torch.testing.assert_close(out.logits[step], full, atol=1e-5, rtol=1e-5)
    assert torch.equal(generate(model, inputs, cache_implementation="static"), new_tokens)
    # chunked prefill: the image features, their bias and the cache are split over 4 forward calls
    chunked = generate(model, inputs, prefill_chunk_size=16, output_logits=True, return_dict_in_generate=True)
    torch.testing.assert_close(torch.stack(chunked.logits), torch.stack(out.logits), atol=1e-5, rtol=1e-5)


def test_batched_equals_one_by_one(stock_folder):
    model = load_turbo(stock_folder, r=8)
    processor = synced(model)
    batch = encode(processor)
    batched_logits, batched_ids = logits(model, batch)[:, -1], generate(model, batch)
    for row in range(2):
        single = encode(processor, indices=(row,))
        assert single["input_ids"].shape[1] <= batch["input_ids"].shape[1]
        torch.testing.assert_close(logits(model, single)[:, -1], batched_logits[row : row + 1], atol=1e-5, rtol=1e-5)
        assert torch.equal(generate(model, single), batched_ids[row : row + 1])
    # beam search expands the merged features and their bias per beam
    beams = generate(model, batch, num_beams=2)
    assert torch.equal(beams, torch.cat([generate(model, encode(processor, (row,)), num_beams=2) for row in range(2)]))


def test_eager_and_sdpa_agree_while_merging(stock_folder):
    results = []
    for attn in ("eager", "sdpa"):
        model = load_turbo(stock_folder, attn=attn, r=[12, 6])
        inputs = encode(synced(model))
        results.append((logits(model, inputs), generate(model, inputs)))
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(results[0][0][real], results[1][0][real], atol=1e-5, rtol=1e-5)
    assert torch.equal(results[0][1], results[1][1])


SETTINGS = [
    ({"r": 8}, "default"),
    ({"r": [10, 3]}, "default"),
    ({"r": 6, "schedule": "decreasing"}, "default"),
    ({"flops_ratio": 0.7}, "default"),
    ({"r": 8, "min_tokens": 52}, "default"),
    ({"r": 8, "restore_output": True}, "default"),
    ({"r": 8}, "full"),
]


@pytest.mark.parametrize("settings,strategy", SETTINGS)
def test_processor_count_is_the_model_feature_count(settings, strategy):
    torch.manual_seed(0)
    config = llava_config(TurboLlavaConfig, turbo_config=settings, vision_feature_select_strategy=strategy)
    model = TurboLlavaForConditionalGeneration(config).eval()
    from_model = synced(model)
    from_config = TurboLlavaProcessor(**processor_parts()).sync_with(config)
    inputs = encode(from_model, indices=(0,))
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        model(**inputs)  # the placeholders fit
    count = features.shape[0]
    assert count == from_model.num_image_tokens(32, 32) == from_config.num_image_tokens(32, 32)
    assert count == model.model.num_image_tokens() == image_token_count(config)
    assert (inputs["input_ids"] == IMAGE_TOKEN_ID).sum() == count
    assert from_model._get_num_multimodal_tokens(image_sizes=[(40, 50)]).num_image_tokens == [count]
    # a config alone gives the layer cost the patched model counts on its modules (FLOP budgets agree)
    assert clip_layer_cost(config.vision_config) == model.model.turbo_runtime.cost
    assert from_config.turbo_layer_cost == from_model.turbo_layer_cost


def test_processor_and_model_counts_that_differ_raise_a_clear_error(stock_folder):
    model = load_turbo(stock_folder, r=8)
    with pytest.raises(ValueError, match=r"64 per image\) but the model gives 96 image features .* 48 per image"):
        logits(model, encode(LlavaProcessor(**processor_parts())))
    other = TurboLlavaProcessor(**processor_parts()).sync_with(load_turbo(stock_folder, r=4))
    with pytest.raises(ValueError, match=r"56 per image\).* 48 per image after Turbo merging \(r=8\)"):
        logits(model, encode(other))


def test_processor_saves_its_turbo_settings(stock_folder, tmp_path):
    model = load_turbo(stock_folder, flops_ratio=0.7)
    processor = synced(model)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["turbo_config"]["flops_ratio"] == 0.7 and saved["turbo_num_layers"] == 2
    assert saved["auto_map"]["AutoProcessor"] == "processing_turbo_llava.TurboLlavaProcessor"
    for loaded in (TurboLlavaProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is TurboLlavaProcessor
        assert loaded.turbo_config == processor.turbo_config
        assert torch.equal(encode(loaded)["input_ids"], encode(processor)["input_ids"])


def run_remote(folder, tensors_path):
    """Load model and processor with trust_remote_code where turbo_hf cannot be imported."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(folder.parent)!r})
        sys.modules["turbo_hf"] = None  # any `import turbo_hf` now fails
        import torch, transformers
        from test_helpers_remote import encode
        expected_ids, expected_logits, expected_new = torch.load({str(tensors_path)!r})
        model = transformers.AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        processor = transformers.AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        inputs = encode(processor)
        with torch.no_grad():
            logits = model(**inputs).logits
            new = model.generate(**inputs, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, do_sample=False)
        new = new[:, inputs["input_ids"].shape[1]:]
        print("REMOTE", type(model).__name__, type(processor).__name__, torch.equal(inputs["input_ids"], expected_ids),
              torch.equal(logits, expected_logits), torch.equal(new, expected_new))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def test_turbo_folder_round_trip_with_and_without_the_package(stock_folder, tmp_path):
    model = load_turbo(stock_folder, r=8)
    processor = synced(model)
    inputs = encode(processor)
    expected_logits, expected_new = logits(model, inputs), generate(model, inputs)

    folder = tmp_path / "turbo"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "turbo_llava" and config["turbo_config"]["r"] == 8
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_turbo_llava.TurboLlavaForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_turbo_llava.TurboLlavaModel"
    assert {"modeling_turbo_llava.py", "modeling_turbo_clip.py", "processing_turbo_llava.py"} <= {p.name for p in folder.iterdir()}

    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is TurboLlavaForConditionalGeneration
    assert type(AutoModel.from_pretrained(folder)) is TurboLlavaModel
    assert torch.equal(logits(loaded, inputs), expected_logits)
    assert torch.equal(generate(loaded, inputs), expected_new)
    assert type(AutoProcessor.from_pretrained(folder)) is TurboLlavaProcessor

    # without the package: remote code for the model and the processor
    helpers = textwrap.dedent(
        f"""
        import numpy as np
        from PIL import Image
        PROMPTS = {PROMPTS!r}
        def encode(processor):
            rng = np.random.default_rng(0)
            images = [Image.fromarray((rng.random((36 + 6 * i, 40, 3)) * 255).astype("uint8")) for i in range(2)]
            return processor(images=images, text=PROMPTS, return_tensors="pt", padding=True)
        """
    )
    (tmp_path / "test_helpers_remote.py").write_text(helpers)
    torch.save((inputs["input_ids"], expected_logits, expected_new), tmp_path / "tensors.pt")
    result = run_remote(folder, tmp_path / "tensors.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE TurboLlavaForConditionalGeneration TurboLlavaProcessor True True True" in result.stdout


def test_unsupported_settings_and_models_are_refused():
    # a list of feature layers concatenates layers token by token: fine at r=0, refused while merging
    torch.manual_seed(0)
    stock = LlavaForConditionalGeneration(llava_config(vision_feature_layer=[-2, -3])).eval()
    processor = LlavaProcessor(**processor_parts())
    inputs = encode(processor, indices=(0,))
    reference = logits(stock, inputs)
    assert torch.equal(logits(apply_turbo(stock, r=0), inputs), reference)
    with pytest.raises(ValueError, match="concatenates the hidden states of several layers"):
        apply_turbo(stock, r=4)  # refused where it is applied, not at the first forward
    assert torch.equal(logits(stock, inputs), reference)  # the r=0 patch is left as it was
    with pytest.raises(ValueError, match="concatenates the hidden states of several layers"):
        llava_config(TurboLlavaConfig, vision_feature_layer=[-2, -3], turbo_config={"r": 4})

    # a feature layer other than the one Turbo was set up for, while merging
    model = TurboLlavaForConditionalGeneration(llava_config(TurboLlavaConfig, turbo_config={"r": 4})).eval()
    with pytest.raises(ValueError, match="needs 3 layers"):
        model.get_image_features(pixel_values=inputs["pixel_values"], vision_feature_layer=-1)


def test_export_with_the_llava_preset_saves_a_synced_processor(stock_folder, tmp_path):
    from transformers import LlavaProcessor

    from turbo_hf.cli.export import export_model

    LlavaProcessor(**processor_parts()).save_pretrained(stock_folder)
    out = export_model(stock_folder, "llava-1.5-7b", tmp_path / "turbo", overrides={"r": 4})
    processor = TurboLlavaProcessor.from_pretrained(out)
    model = TurboLlavaForConditionalGeneration.from_pretrained(out).eval()
    batch = encode(processor)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    per_image = sum(f.shape[0] for f in features) // 2 if isinstance(features, (list, tuple)) else features.shape[1]
    assert per_image == 64 - 2 * 4  # 2 tower layers run (feature layer -2), [CLS] dropped
    assert int((batch["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2 * per_image


def test_processor_sync_with_another_model_is_a_clear_error():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    processor = TurboLlavaProcessor(**processor_parts())
    with pytest.raises(ValueError, match=r"needs a \(Turbo\) LLaVA model or config .*got a ViTModel \(ViTConfig\)"):
        processor.sync_with(vit)
    with pytest.raises(ValueError, match="needs a .* LLaVA model or config .*got a ViTConfig"):
        processor.sync_with(vit.config)
    assert processor.turbo_config is None  # left as it was
