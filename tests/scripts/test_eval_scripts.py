"""Every evaluation script, for every family it accepts, end to end on tiny random checkpoints and a tiny local
dataset (`turbo_hf.testing.eval_assets`), in one process and in two.

Design (launching two processes costs ~10 s of start-up each time, so it is paid once): `RUNS` lists one run per
(script, family). `launched` starts ONE `accelerate launch --multi_gpu --num_processes 2` of `launch_runs.py`,
which runs every run's `main(argv)` in turn in the same two CPU processes (gloo); while it works, each test runs
its run in-process with one process (the same `main(argv)`), checks the JSON, markdown and plot it wrote, then
checks that the two-process JSON holds the same rows and metrics (every per-sample list once: no duplicates).
A family a script does not accept is refused by name before any data or weights load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turbo_hf.evaluation import driver
from turbo_hf.evaluation.driver import CLASSIFICATION_FAMILIES, GENERATIVE_FAMILIES, RETRIEVAL_FAMILIES
from turbo_hf.evaluation.runner import launch_warning
from turbo_hf.testing.eval_assets import CHECKPOINTS, write_checkpoint, write_dataset

sys.path.insert(0, str(Path(__file__).parent))
from launch_runs import SCRIPTS, load_script  # noqa: E402

# one xdist worker runs the whole module, so the two-process launch (a module fixture) starts once
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("eval_scripts_launch")]

REPO = SCRIPTS.parent
TASKS = {"eval_classification": "classification", "eval_retrieval": "retrieval", "eval_captioning": "captioning",
         "eval_vqa": "vqa"}
FAMILIES = {"eval_classification": CLASSIFICATION_FAMILIES, "eval_retrieval": RETRIEVAL_FAMILIES,
            "eval_captioning": GENERATIVE_FAMILIES, "eval_vqa": GENERATIVE_FAMILIES}
TURBO = ["--modes", "none,turbo", "--r", "4"]
CAPTION = [*TURBO, "--caption-column", "captions", "--max-new-tokens", "3", "--min-new-tokens", "1", "--num-beams", "2"]
VQA = [*TURBO, "--max-new-tokens", "3", "--num-beams", "1"]
TEXTS = ["--caption-column", "captions"]
# id -> (script, family, checkpoint, dataset, arguments)
RUNS = {
    "classification-vit": ("eval_classification", "vit", "vit", "folder", ["--modes", "none,tome,turbo", "--r", "0,4"]),
    "classification-dinov2": ("eval_classification", "dinov2", "dinov2", "splits",
                              [*TURBO, "--split", "test", "--probe-train-split", "train"]),
    "classification-clip": ("eval_classification", "clip", "clip", "folder", TURBO),
    "classification-siglip": ("eval_classification", "siglip", "siglip", "folder", TURBO),
    "classification-clip-vision": ("eval_classification", "clip_vision_model", "clip_vision", "folder", TURBO),
    "classification-siglip-vision": ("eval_classification", "siglip_vision_model", "siglip_vision", "folder", TURBO),
    "classification-convnext-stock": ("eval_classification", "convnext", "convnext", "folder", ["--modes", "none"]),
    "retrieval-clip": ("eval_retrieval", "clip", "clip", "data.jsonl", [*TEXTS, "--modes", "stock,random,semantic",
                                                                         "--r", "4"]),
    "retrieval-siglip": ("eval_retrieval", "siglip", "siglip", "data.jsonl", [*TURBO, *TEXTS]),
    "retrieval-blip": ("eval_retrieval", "blip", "blip_itm", "data.jsonl", [*TURBO, *TEXTS, "--itm-k", "3"]),
    "retrieval-blip-2": ("eval_retrieval", "blip-2", "blip2_itm", "data.jsonl", [*TURBO, *TEXTS, "--itm-k", "2"]),
    "captioning-blip": ("eval_captioning", "blip", "blip_caption", "data.jsonl", CAPTION),
    "captioning-blip-2": ("eval_captioning", "blip-2", "blip2", "data.jsonl", CAPTION),
    "captioning-instructblip": ("eval_captioning", "instructblip", "instructblip", "data.jsonl", CAPTION),
    "captioning-llava": ("eval_captioning", "llava", "llava", "data.jsonl", CAPTION),
    "vqa-blip": ("eval_vqa", "blip", "blip_vqa", "data.jsonl", VQA),
    "vqa-blip-2": ("eval_vqa", "blip-2", "blip2", "data.jsonl", VQA),
    "vqa-instructblip": ("eval_vqa", "instructblip", "instructblip", "data.jsonl", VQA),
    "vqa-llava": ("eval_vqa", "llava", "llava", "data.jsonl", VQA),
}
SAMPLES = 8  # rows of data.jsonl and of the image folder; batches of 3 give the two processes 2 and 1 batches


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("eval_scripts"))
    for name in CHECKPOINTS:
        write_checkpoint(name, root)
    return root


def argv(run: str, assets: Path, out: Path) -> list[str]:
    script, _, checkpoint, dataset, arguments = RUNS[run]
    return ["--model", str(assets / checkpoint), "--dataset", str(assets / dataset), *arguments, "--batch-size", "3",
            "--repeats", "1", "--warmup", "0", "--no-flops", "--out", str(out / run)]


def accelerate_command(*options: str) -> list[str]:
    executable = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    return [executable, "launch", *options, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def offline_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


class Launch:
    """One `accelerate launch` of the `runs`, started at once; `result(run)` waits for that run only."""

    def __init__(self, assets: Path, out: Path, runs: list[str]) -> None:
        self.runs, self.out, self.order = out / "runs.json", out, runs
        self.runs.write_text(json.dumps([[RUNS[run][0], argv(run, assets, out)] for run in runs]))
        command = accelerate_command("--multi_gpu", "--num_processes", "2", "--main_process_port", "0")
        self.log = open(out / "stderr.txt", "w+")
        self.process = subprocess.Popen([*command, str(Path(__file__).parent / "launch_runs.py"), str(self.runs)],
                                        env=offline_env(), stdout=subprocess.DEVNULL, stderr=self.log, text=True)

    @property
    def stderr(self) -> str:
        return (self.out / "stderr.txt").read_text()

    def result(self, run: str) -> dict:
        done = Path(f"{self.runs}.{self.order.index(run)}.done")
        deadline = time.monotonic() + 600
        while not done.exists() and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.exists(), f"exit code {self.process.poll()}: {self.stderr[-4000:]}"
        return written(self.out / run, TASKS[RUNS[run][0]])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def written(folder: Path, task: str) -> dict:
    """The JSON a run wrote, after checking it also wrote its markdown table and plot."""
    for suffix in (".json", ".md", ".png"):
        assert (folder / f"{task}{suffix}").stat().st_size > 100
    return json.loads((folder / f"{task}.json").read_text())


@pytest.fixture(scope="module")
def launched(assets, tmp_path_factory, request):
    selected = {item.callspec.params["run"] for item in request.session.items
                if item.originalname == "test_one_process_then_two_give_the_same_results"}
    launch = Launch(assets, tmp_path_factory.mktemp("two_processes"), [run for run in RUNS if run in selected])
    yield launch
    launch.close()


def check_run(run: str, payload: dict) -> None:
    """What each run must show beyond the shared checks."""
    script, family = RUNS[run][:2]
    rows = {row["name"]: row for row in payload["rows"]}
    metrics = [row["metrics"] for row in payload["rows"]]
    if run == "classification-vit":
        assert list(rows) == ["stock", "tome r=4", "turbo r=4"]
        assert rows["turbo r=4"]["plan"]["final_tokens"] == 65 - 4 * 4  # 4 layers of the tiny ViT, r = 4
        assert all({"top1", "top5", "probe_acc", "agreement_with_stock"} <= set(m) for m in metrics)
        assert rows["stock"]["metrics"]["agreement_with_stock"] == 100.0
    elif family == "convnext":
        assert all({"top1", "probe_acc"} <= set(m) for m in metrics) and list(rows) == ["stock"]
    elif script == "eval_classification":
        assert all("probe_acc" in m and "top1" not in m for m in metrics)  # no head: the probe alone
    if script == "eval_classification":  # the probe trained on the train split, else on the other half
        evaluated = SAMPLES if "--probe-train-split" in RUNS[run][4] else SAMPLES // 2
        assert all(m["num_samples"] == evaluated for m in metrics) and payload["dataset"]["evaluated"] == evaluated
    if script == "eval_retrieval":
        assert payload["dataset"]["texts"] == 2 * SAMPLES
        assert payload["family"] == {"clip": "dual", "siglip": "dual"}.get(family, family.replace("-", ""))
        for m in metrics:
            assert 0 <= m["i2t_R@1"] <= m["i2t_R@5"] <= m["i2t_R@10"] <= 100 and m["t2i_R@10"] == 100.0
            assert m["scores"] == ("itm" if family.startswith("blip") else "itc")
    if script == "eval_captioning":
        assert payload["meteor"].startswith("off (--meteor")
        for m in metrics:
            assert len(m["captions"]) == SAMPLES and all(isinstance(c, str) and c for c in m["captions"])
            assert "[DEC]" not in " ".join(m["captions"]) and "<image>" not in " ".join(m["captions"])
            assert {"BLEU-4", "CIDEr", "ROUGE-L", "BLEU-1"} <= set(m) and m["METEOR"] is None
    if script == "eval_vqa":
        for m in metrics:
            assert len(m["answers"]) == SAMPLES and 0 <= m["vqa_acc"] <= 100
            assert {"vqa_acc_number", "vqa_acc_other"} <= set(m)
    if "--r" in RUNS[run][4] and family != "convnext":
        turbo = next(row for row in payload["rows"] if row["mode"] != "stock")
        assert turbo["plan"]["final_tokens"] < 65 and turbo["plan"]["flops_speed_limit"] > 1


def test_every_family_a_script_accepts_has_a_run():
    covered = {(script, family) for script, family, *_ in RUNS.values()}
    assert {(script, family) for script, families in FAMILIES.items() for family in families} <= covered


@pytest.mark.parametrize("run", list(RUNS))
def test_one_process_then_two_give_the_same_results(run, assets, launched, tmp_path, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "evaluate", types.SimpleNamespace(load=lambda *a, **k: pytest.fail("fetched")))
    script = RUNS[run][0]
    assert load_script(script).main(argv(run, assets, tmp_path)) == 0
    one = written(tmp_path / run, TASKS[script])
    assert one["metadata"]["processes"] == 1
    assert all(row["speed"]["median_ms"] > 0 for row in one["rows"])
    check_run(run, one)
    two = launched.result(run)
    assert two["metadata"]["processes"] == 2
    assert [row["name"] for row in two["rows"]] == [row["name"] for row in one["rows"]]
    for a, b in zip(one["rows"], two["rows"]):
        assert a["metrics"] == b["metrics"], a["name"]
        assert a["plan"] == b["plan"]
    assert "`accelerate launch` was asked for" not in launched.stderr  # the processes asked for are the ones running


@pytest.mark.parametrize("script, checkpoint, modes", [
    ("eval_captioning", "clip", "none"), ("eval_vqa", "vit", "none"), ("eval_retrieval", "llava", "none"),
    ("eval_classification", "blip_caption", "none,turbo"), ("eval_classification", "convnext", "none,turbo"),
])
def test_a_family_a_script_does_not_accept_is_refused_by_name_before_anything_loads(
    script, checkpoint, modes, assets, tmp_path, monkeypatch, capsys
):
    def loaded(*args, **kwargs):
        pytest.fail("loaded before the family was checked")

    monkeypatch.setattr(driver, "load_model", loaded)
    monkeypatch.setattr(driver, "load_data", loaded)
    code = load_script(script).main(["--model", str(assets / checkpoint), "--dataset", str(assets / "data.jsonl"),
                                     "--modes", modes, "--r", "4", "--out", str(tmp_path)])
    error = capsys.readouterr().err
    family = json.loads((assets / checkpoint / "config.json").read_text())["model_type"]
    assert code == 2 and f"is a {family!r} model; this script evaluates" in error
    assert all(f"{name} ({model_type})" in error for model_type, name in FAMILIES[script].items())
    assert "Traceback" not in error and not (tmp_path / f"{TASKS[script]}.json").exists()


def test_num_processes_without_multi_gpu_warns_that_one_process_runs(tmp_path):
    """The real launcher: what it starts and sets for `--num_processes 2` alone (the child only records it, so it
    needs no turbo_hf import), then the warning `Runner` gives for exactly that (test_runner.py: that it logs it)."""
    program = tmp_path / "record.py"
    program.write_text(
        "import json, os, sys\nfrom accelerate import PartialState\n"
        "arguments = open(f'/proc/{os.getppid()}/cmdline').read().split(chr(0))\n"
        "json.dump({'processes': PartialState(cpu=True).num_processes, 'environ': dict(os.environ), "
        "'arguments': arguments, 'script': sys.argv[0]}, open(sys.argv[1], 'w'))\n"
    )
    record = tmp_path / "record.json"
    done = subprocess.run([*accelerate_command("--num_processes", "2"), str(program), str(record)],
                          env=offline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(record.read_text())
    assert seen["processes"] == 1  # accelerate 1.x: one process, without a word about it
    message = launch_warning(seen["processes"], seen["environ"], seen["arguments"], seen["script"])
    assert "`accelerate launch` was asked for 2 processes (`--num_processes 2`), but this run has 1" in message
    assert "accelerate launch --multi_gpu --num_processes 2" in message
