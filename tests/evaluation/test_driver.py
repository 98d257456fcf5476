"""The evaluation machinery and every evaluation script end to end, on tiny random models and a tiny local
dataset built on the fly (scikit-image photos with hand-written captions, questions and labels)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from turbo_hf.evaluation.driver import (
    UsageError,
    build_settings,
    count_flops,
    load_data,
    measure_settings,
    parse_modes,
    require_columns,
    settings_from_args,
    shard_batches,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
BLIP_MODES = "none,turbo"

# name -> (class, captions, question, answer)
PHOTOS = {
    "astronaut": ("person", ["an astronaut in a white suit", "a woman astronaut next to a flag"], "what color is the suit", "white"),
    "chelsea": ("animal", ["a cat sitting on the floor", "an orange cat looking up"], "what animal is this", "cat"),
    "coffee": ("object", ["a cup of coffee on a plate", "a coffee cup on a saucer"], "what is in the cup", "coffee"),
    "rocket": ("object", ["a rocket on the launch pad", "a white rocket under a blue sky"], "what color is the sky", "blue"),
    "camera": ("person", ["a man with a camera", "a photographer standing on the grass"], "how many men are there", "1"),
    "cat": ("animal", ["a cat lying down", "a cat with green eyes"], "what animal is this", "cat"),
    "hubble_deep_field": ("object", ["galaxies in the deep sky", "many stars and galaxies"], "what is in the sky", "galaxies"),
    "coins": ("object", ["old coins on a table", "many coins in rows"], "how many coins are there", "many"),
}
CLASSES = ["animal", "object", "person"]
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, busy machine every op then waits for
    the other thread: run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny data (jsonl + imagefolder) and tiny ViT / CLIP / BLIP / ConvNeXt checkpoints with processors."""
    import skimage.data as skd
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForImageTextRetrieval,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        ConvNextConfig,
        ConvNextForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    root = tmp_path_factory.mktemp("eval_assets")
    (root / "images").mkdir()
    records = []
    for name, (label, captions, question, answer) in PHOTOS.items():
        array = np.asarray(getattr(skd, name)())
        array = np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]
        image = Image.fromarray(array.astype(np.uint8)).resize((40, 40))
        image.save(root / "images" / f"{name}.png")
        (root / "folder" / label).mkdir(parents=True, exist_ok=True)
        image.save(root / "folder" / label / f"{name}.png")
        records.append({"image": f"images/{name}.png", "label": CLASSES.index(label), "captions": captions,
                        "question": question, "answers": [answer] * 7 + ["no"] * 3,
                        "answer_type": "number" if question.startswith("how many") else "other"})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))

    words = sorted({w for r in records for text in r["captions"] + [r["question"]] + r["answers"] for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]")

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(**TOWER, image_size=32, patch_size=4, num_labels=3,
                                              id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)}))
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")

    text = dict(vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0, **TOWER)
    clip = CLIPModel(CLIPConfig(text_config={**text, "bos_token_id": 2, "eos_token_id": 3},
                                vision_config=dict(image_size=32, patch_size=4, **TOWER), projection_dim=16))
    clip.save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")

    blip_config = BlipConfig(text_config={**text, "bos_token_id": 5, "sep_token_id": 3, "eos_token_id": 3},
                             vision_config=dict(image_size=32, patch_size=4, **TOWER), projection_dim=16,
                             image_text_hidden_size=16)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    for cls, name in ((BlipForConditionalGeneration, "blip_caption"), (BlipForQuestionAnswering, "blip_vqa"),
                      (BlipForImageTextRetrieval, "blip_itm")):
        torch.manual_seed(0)
        cls(blip_config).save_pretrained(root / name)
        processor.save_pretrained(root / name)

    ConvNextForImageClassification(ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                                                  image_size=32)).save_pretrained(root / "convnext")
    return root


def run_script(name: str, args: list[str], out: Path) -> dict:
    module = load_script(name)
    assert module.main([*args, "--out", str(out), "--repeats", "1", "--warmup", "0"]) == 0
    task = {"eval_classification": "classification", "eval_retrieval": "retrieval", "eval_captioning": "captioning",
            "eval_vqa": "vqa"}[name]
    for suffix in (".json", ".md", ".png"):
        assert (out / f"{task}{suffix}").stat().st_size > 100
    return json.loads((out / f"{task}.json").read_text())


# -------------------------------------------------------------------------------------------- pieces


def test_modes_settings_and_sharding():
    assert parse_modes("none,TOME,turbo,stock") == ["stock", "tome", "turbo"]
    with pytest.raises(UsageError, match="Unknown mode 'fast'"):
        parse_modes("tome,fast")
    settings = build_settings(["turbo", "tome", "stock"], [0, 4, 8], {"alpha": 0.1, "min_tokens": 3})
    assert [s.name for s in settings] == ["stock", "tome r=4", "tome r=8", "turbo r=4", "turbo r=8"]
    assert settings[-1].config.alpha == 0.1 and settings[-1].config.min_tokens == 3 and settings[0].config is None
    assert shard_batches(7, 2, 0, 2) == [[0, 1], [4, 5]] and shard_batches(7, 2, 1, 2) == [[2, 3], [6]]
    assert sorted(i for rank in range(3) for b in shard_batches(10, 3, rank, 3) for i in b) == list(range(10))


def test_settings_from_a_preset_and_overrides():
    class Args:
        modes, r, turbo_preset, batch_size = ["stock", "turbo"], None, "blip-caption-base", 4

    settings = settings_from_args(Args)
    assert [s.name for s in settings] == ["stock", "turbo r=30"]
    assert settings[1].config.alpha == 150.0 and settings[1].config.alpha_scale == "raw"
    Args.r = [0, 10]
    assert [s.name for s in settings_from_args(Args)] == ["stock", "turbo r=10"]
    Args.turbo_preset, Args.r = None, None
    with pytest.raises(UsageError, match="Give --r"):
        settings_from_args(Args)


def test_local_data_through_datasets(assets):
    data = load_data(str(assets / "data.jsonl"))
    assert len(data) == 8 and data[0]["image"].size == (40, 40) and data[0]["captions"][0].startswith("an astronaut")
    folder = load_data(str(assets / "folder"))
    assert sorted(folder.features["label"].names) == CLASSES and len(folder) == 8
    assert len(load_data(str(assets / "data.jsonl"), where=["answer_type=number"], max_samples=1)) == 1
    with pytest.raises(UsageError, match="no column 'caption'.*--caption-column"):
        require_columns(data, caption_column="caption")
    with pytest.raises(UsageError, match="no split 'validation'"):
        load_data(str(assets / "data.jsonl"), split="validation")
    with pytest.raises(UsageError, match="does not exist"):
        load_data(str(assets / "missing.jsonl"))


def test_measurement_counts_flops_and_times_every_setting():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    flops = {}
    for attn in ("eager", "sdpa"):
        model = ViTModel(ViTConfig(**TOWER, image_size=32, patch_size=4, attn_implementation=attn)).eval()
        flops[attn] = count_flops(lambda: model(pixel_values=pixels))
    assert flops["sdpa"] == flops["eager"] > 0  # the CPU flash kernel is counted like the eager matmuls
    settings = build_settings(["tome", "turbo"], [0, 8])
    result = measure_settings(model, settings, lambda: model(pixel_values=pixels), 2, "cpu", warmup=1, repeats=2,
                              progress=False)
    assert set(result) == {"stock", "tome r=8", "turbo r=8"}
    assert result["stock"]["speedup"] == 1.0 and len(result["tome r=8"]["latencies_ms"]) == 2
    assert result["tome r=8"]["flops"] < result["stock"]["flops"]
    assert result["stock"]["throughput"] == pytest.approx(2 * 1000 / result["stock"]["median_ms"])
    assert type(model).__name__ == "ViTModel"  # left stock


# ------------------------------------------------------------------------------------------- scripts


def test_classification_head_and_probe(assets, tmp_path):
    payload = run_script("eval_classification", ["--model", str(assets / "vit"), "--dataset", str(assets / "folder"),
                                                 "--modes", "none,tome,turbo", "--r", "0,4", "--batch-size", "3"], tmp_path)
    rows = {row["name"]: row for row in payload["rows"]}
    assert list(rows) == ["stock", "tome r=4", "turbo r=4"]
    assert rows["stock"]["plan"]["final_tokens"] is None and rows["turbo r=4"]["plan"]["final_tokens"] == 65 - 2 * 4
    for row in rows.values():
        assert {"top1", "top5", "probe_acc", "agreement_with_stock"} <= set(row["metrics"])
        assert row["metrics"]["num_samples"] == 4  # the probe trained on the other half
        assert row["speed"]["median_ms"] > 0 and row["speed"]["flops"] > 0
    assert rows["stock"]["metrics"]["agreement_with_stock"] == 100.0
    assert payload["metadata"]["processes"] == 1 and payload["metadata"]["versions"]["torch"]


def test_retrieval_clip_itc(assets, tmp_path):
    payload = run_script("eval_retrieval", ["--model", str(assets / "clip"), "--dataset", str(assets / "data.jsonl"),
                                            "--caption-column", "captions", "--modes", "stock,random,semantic",
                                            "--r", "4", "--batch-size", "4"], tmp_path)
    assert [row["name"] for row in payload["rows"]] == ["stock", "random r=4", "semantic r=4"]
    assert payload["dataset"]["texts"] == 16 and payload["family"] == "dual"
    for row in payload["rows"]:
        metrics = row["metrics"]
        assert 0 <= metrics["i2t_R@1"] <= metrics["i2t_R@5"] <= metrics["i2t_R@10"] <= 100
        assert metrics["t2i_R@10"] == 100.0  # only 8 images


def test_retrieval_blip_itm_reranking(assets, tmp_path):
    payload = run_script("eval_retrieval", ["--model", str(assets / "blip_itm"), "--dataset", str(assets / "data.jsonl"),
                                            "--caption-column", "captions", "--modes", BLIP_MODES, "--r", "4",
                                            "--batch-size", "8", "--itm-k", "3", "--no-flops"], tmp_path)
    assert payload["family"] == "blip" and payload["itm_k"] == 3
    assert len(payload["rows"]) == len(BLIP_MODES.split(","))
    for row in payload["rows"]:
        metrics = row["metrics"]
        assert metrics["scores"] == "itm" and "itc_i2t_R@1" in metrics and "itm_t2i_R@1" in metrics
        assert 0 <= metrics["itm_i2t_R@1"] <= metrics["itm_i2t_R@5"] <= 100 and metrics["i2t_R@1"] == metrics["itm_i2t_R@1"]


def test_captioning_blip(assets, tmp_path, monkeypatch):
    import types

    loads = []  # METEOR is opt-in: by default no metric code is fetched from the Hub
    monkeypatch.setitem(sys.modules, "evaluate", types.SimpleNamespace(load=lambda *a, **k: loads.append(a)))
    payload = run_script("eval_captioning", ["--model", str(assets / "blip_caption"), "--dataset", str(assets / "data.jsonl"),
                                             "--caption-column", "captions", "--modes", BLIP_MODES, "--r", "6",
                                             "--batch-size", "8", "--max-new-tokens", "4", "--min-new-tokens", "1",
                                             "--num-beams", "2", "--no-flops"], tmp_path)
    assert loads == [] and payload["meteor"].startswith("off (--meteor")
    for row in payload["rows"]:
        metrics = row["metrics"]
        assert len(metrics["captions"]) == 8 and all(isinstance(c, str) for c in metrics["captions"])
        assert "[DEC]" not in " ".join(metrics["captions"])
        assert {"BLEU-4", "CIDEr", "ROUGE-L", "BLEU-1"} <= set(metrics) and metrics["METEOR"] is None
    assert (tmp_path / "captioning.md").read_text().count("n/a") >= len(payload["rows"])
    assert payload["rows"][1]["plan"]["final_tokens"] == 65 - 2 * 6


def test_vqa_blip(assets, tmp_path):
    payload = run_script("eval_vqa", ["--model", str(assets / "blip_vqa"), "--dataset", str(assets / "data.jsonl"),
                                      "--modes", BLIP_MODES, "--r", "4", "--batch-size", "8", "--max-new-tokens", "3",
                                      "--num-beams", "1", "--no-flops"], tmp_path)
    for row in payload["rows"]:
        metrics = row["metrics"]
        assert len(metrics["answers"]) == 8 and 0 <= metrics["vqa_acc"] <= 100
        assert {"vqa_acc_number", "vqa_acc_other"} <= set(metrics)


def test_two_processes_give_the_same_metrics_as_one(assets, tmp_path):
    args = ["--model", str(assets / "vit"), "--dataset", str(assets / "data.jsonl"), "--modes", "none,tome",
            "--r", "4", "--batch-size", "3", "--repeats", "1", "--warmup", "0", "--no-flops"]
    module = load_script("eval_classification")
    assert module.main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "classification.json").read_text())
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPTS / "eval_classification.py"),
               *args, "--out", str(tmp_path / "two")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "classification.json").read_text())
    assert two["metadata"]["processes"] == 2
    for a, b in zip(one["rows"], two["rows"]):
        assert a["name"] == b["name"]
        assert a["metrics"] == b["metrics"]


def test_bad_arguments_end_with_a_message_and_code_2(assets, tmp_path, capsys):
    module = load_script("eval_classification")
    base = ["--model", str(assets / "vit"), "--dataset", str(assets / "data.jsonl"), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        module.main([*base, "--modes", "none,warp"])
    assert exit_info.value.code == 2 and "Unknown mode 'warp'" in capsys.readouterr().err
    assert module.main([*base, "--r", "4", "--label-column", "category"]) == 2
    assert "no column 'category'" in capsys.readouterr().err
    retrieval = load_script("eval_retrieval")
    assert retrieval.main(["--model", str(assets / "clip"), "--dataset", str(assets / "data.jsonl"), "--r", "4",
                           "--out", str(tmp_path)]) == 2
    assert "no column 'caption'" in capsys.readouterr().err
    command = [sys.executable, str(SCRIPTS / "eval_classification.py"), "--model", str(assets / "convnext"),
               "--dataset", str(assets / "folder"), "--modes", "none,turbo", "--r", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Turbo does not support ConvNextForImageClassification" in done.stderr
    assert "Traceback" not in done.stderr


def test_results_page_is_regenerated_from_the_json(tmp_path):
    bench = tmp_path / "benchmarks"
    shutil.copytree(REPO / "benchmarks", bench)
    for generated in ("README.md", "dinov2_results.png"):
        (bench / generated).unlink(missing_ok=True)
    module = load_script("make_results_page")
    assert module.main(["--bench-dir", str(bench)]) == 0
    page = (bench / "README.md").read_text()
    speed = json.loads((bench / "speed_dinov2.json").read_text())
    tome = next(row for row in speed["rows"] if row["mode"] == "tome" and row["r"] == 16)
    assert (f"| ToMe | 16 | {tome['final_tokens']} | {tome['theoretical_speedup']:.2f}x | "
            f"**{tome['measured_speedup']:.2f}x** | {tome['efficiency']:.0%} |") in page
    probe = json.loads((bench / "quality_dinov2.json").read_text())["probe"]
    r = str(probe["r"][-1])
    turbo, tome = (100 * probe["rows"][key][f"digits r={r}"]["accuracy"] for key in ("turbo-length-0.02", "tome"))
    assert f"digits at {probe['speed_limit'][r]:.2f}x: Turbo (default) {turbo:.1f} %, ToMe {tome:.1f} %" in page
    assert (bench / "dinov2_results.png").stat().st_size > 10_000
    committed = REPO / "benchmarks" / "README.md"
    if committed.exists():
        assert page == committed.read_text(), "benchmarks/README.md is stale: run python scripts/make_results_page.py"
    assert module.main(["--bench-dir", str(tmp_path / "nowhere")]) == 2


def test_meteor_is_optional_and_generated_text_loses_its_prompt(monkeypatch):
    import types

    from turbo_hf.evaluation.driver import decode_generated

    captioning = load_script("eval_captioning")
    offline = types.SimpleNamespace(load=lambda name: (_ for _ in ()).throw(FileNotFoundError("no Hub here")))
    monkeypatch.setitem(sys.modules, "evaluate", offline)
    assert captioning.load_meteor(True) == (None, "FileNotFoundError: no Hub here")
    assert captioning.load_meteor(False)[0] is None
    required = ["--model", "org/model", "--dataset", "org/data"]
    assert captioning.parse_args(required).meteor is False  # opt-in
    assert captioning.parse_args([*required, "--meteor"]).meteor is True
    assert captioning.parse_args([*required, "--no-meteor"]).meteor is False  # the old flag still parses

    class Words:
        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(f"w{i}" for i in row.tolist()) for row in ids]

    inputs = {"input_ids": torch.tensor([[1, 2], [3, 4]])}
    # decoder-only models return the prompt tokens first: they are cut off
    assert decode_generated(Words(), torch.tensor([[1, 2, 5], [3, 4, 6]]), inputs, None) == ["w5", "w6"]
    # BLIP returns its own start token then the prompt text: the prompt is cut from the text
    assert decode_generated(Words(), torch.tensor([[7, 8]]), {}, ["w7"]) == ["w8"]


def test_a_missing_local_model_or_dataset_fails_at_once(tmp_path, monkeypatch, capsys):
    import time

    from turbo_hf.evaluation.driver import load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "data.jsonl").write_text("")
    module = load_script("eval_classification")
    start = time.perf_counter()
    for flag in ("--model", "--dataset"):
        for missing in ("./nothing", "runs/nothing", str(tmp_path / "no" / "where")):
            argv = {"--model": "org/model", "--dataset": "data.jsonl", flag: missing}
            with pytest.raises(SystemExit) as exit_info:
                module.main([part for pair in argv.items() for part in pair])
            assert exit_info.value.code == 2
            assert f"argument {flag}: the local path {missing!r} does not exist" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--model: the local path 'runs/nothing' does not exist"):
        load_model("runs/nothing", ["AutoModel"])
    for missing in ("runs/nothing", "./nothing.jsonl", "~/no-such-turbo-hf-data"):
        with pytest.raises(UsageError, match=f"--dataset: the local file or folder '{missing}' does not exist"):
            load_data(missing)
    assert time.perf_counter() - start < 10
