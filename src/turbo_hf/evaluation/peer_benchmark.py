"""turbo-hf against its peers on identical weights, in one interleaved run: speed, memory, output difference.

One random ViT-B/16-shaped `ViTForImageClassification` (`ViTConfig()`, 1000 labels, seeded) is saved once; every
setting loads that folder. turbo-hf (`mode="tome"` with ToMe's token order: the ToMe algorithm, tokens out
matched; and `mode="turbo"`) runs in this process; pruna's `token_merging` needs Transformers 4.x, so it runs in
the peers' own environment through `peer_worker.py`, which this module drives over a pipe (the round trip is
timed, a fraction of a millisecond). Both environments time their own stock model on the same weights, and each
row is compared with the stock model of its environment: speed-ups, the cosine of the logits and top-1
agreement. All settings share one round-robin loop (`timing.interleaved_times`, rotating start) and one thread
count; peak memory is measured once per setting in a fresh process (`peer_worker.peak_forward_rss_mib`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging

from ..modeling.patching import turbo_plan
from ..modeling.schedules import LayerCost, flops_fraction, token_counts
from . import peer_worker
from .timing import interleaved_times, timing_summary

logger = logging.get_logger(__name__)

WORKER = Path(peer_worker.__file__)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `turbo_hf`


class PeerProcess:
    """`peer_worker.py` serving some settings in another Python environment (the peers' venv)."""

    def __init__(self, python: str, weights: Path, inputs: Path, threads: int, settings: list[str]) -> None:
        if not Path(python).is_file():
            raise FileNotFoundError(
                f"`peer_python` {python!r} does not exist. Create the peers' environment: {peer_worker.PRUNA_INSTALL}"
            )
        missing = subprocess.run(
            [python, "-c", "import importlib.util as u; print(' '.join(p for p in ('torch', 'transformers', 'pruna') "
             "if u.find_spec(p) is None))"], capture_output=True, text=True, check=True,
        ).stdout.split()
        if missing:
            raise RuntimeError(
                f"The peers' environment {python} lacks {', '.join(missing)} (peers are not turbo-hf dependencies). "
                f"Create it: {peer_worker.PRUNA_INSTALL}"
            )
        command = [python, str(WORKER), "--weights", str(weights), "--inputs", str(inputs), "--threads", str(threads),
                   "--settings", ",".join(settings)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.versions = self._answer()["versions"]

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"The peer worker exited with code {self.process.wait()} (see its error above).")
        return json.loads(line)

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)


def save_reference(folder: Path, seed: int, small: bool = False) -> ViTConfig:
    """Save the seeded random ViT-B/16-shaped classifier every setting loads (`small`: a 2-layer stand-in)."""
    torch.manual_seed(seed)
    config = ViTConfig(num_labels=1000)
    if small:
        config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=64, patch_size=8, num_labels=10)
    ViTForImageClassification(config).save_pretrained(folder)
    return config


def _memory(python: str, setting: str, weights: Path, inputs: Path, threads: int) -> float:
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    command = [python, str(WORKER), "--weights", str(weights), "--inputs", str(inputs), "--threads", str(threads),
               "--memory", setting, "--key", "batch"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def _agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=-1)
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    return {"logits_cosine": float(cosine.mean()), "top1_agreement": float(top1),
            "max_abs_logit_diff": float((logits - reference).abs().max())}


def _tome_plan(r: int, tokens: int, cost: LayerCost, layers: int, observed: int | None) -> dict | None:
    """ToMe's schedule for a constant r (each layer removes `min(r, (t - 1) // 2)` with a class token), with its
    FLOP fraction from turbo-hf's cost model; None when a peer reported a final count that it does not explain."""
    schedule, left = [], tokens
    for _ in range(layers):
        schedule.append(min(r, (left - 1) // 2))
        left -= schedule[-1]
    plan = {"schedule": schedule, "token_counts": token_counts(schedule, tokens),
            "flops_fraction": flops_fraction(schedule, tokens, cost)}
    expected_final = tokens if r == 0 else observed
    return plan if expected_final == plan["token_counts"][-1] else None


def run_peer_benchmark(
    r_values: list[int],
    batch_size: int = 8,
    rounds: int = 3,
    rounds_single: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    peer_python: str = "/work/venv-peers/bin/python",
    peers: bool = True,
    small: bool = False,
    memory: bool = True,
    seed: int = 0,
) -> dict:
    """Time and compare every setting; returns `{"rows": [...], "peer_versions": ..., "tokens": N}`.

    Rows: `stock` and turbo-hf `tome` / `turbo` at each r in this environment; with `peers`, `stock (peer env)`
    and `pruna token_merging` at each r in `peer_python`'s environment (refused with the install command when it
    or pruna is missing). `small` swaps in a 2-layer model (a cheap check of the whole path); without `memory`
    no fresh process measures peak memory (`peak_forward_rss_mib` None).
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights, inputs_path = Path(tmp) / "weights", Path(tmp) / "inputs.pt"
        config = save_reference(weights, seed, small)
        generator = torch.Generator().manual_seed(seed)
        shape = (3, config.image_size, config.image_size)
        inputs = {"batch": torch.randn(batch_size, *shape, generator=generator),
                  "single": torch.randn(1, *shape, generator=generator)}
        torch.save(inputs, inputs_path)
        tokens = (config.image_size // config.patch_size) ** 2 + 1

        # name -> (environment, worker setting, r)
        settings = {"stock": ("this", "stock", 0)}
        for mode in ("tome", "turbo"):
            settings.update({f"turbo-hf {mode} r={r}": ("this", f"turbo:{mode}:{r}", r) for r in r_values})
        if peers:
            settings["stock (peer env)"] = ("peers", "stock", 0)
            settings.update({f"pruna token_merging r={r}": ("peers", f"pruna:{r}", r) for r in r_values})
        local = {name: peer_worker.build_setting(setting, str(weights), threads)
                 for name, (env, setting, _) in settings.items() if env == "this"}
        remote = {name: setting for name, (env, setting, _) in settings.items() if env == "peers"}
        worker = PeerProcess(peer_python, weights, inputs_path, threads, list(remote.values())) if remote else None
        peer_tokens = {}
        try:
            results = {}
            for key, repeats in (("single", rounds_single), ("batch", rounds)):
                runs = {name: (lambda model=model, key=key: peer_worker.logits_of(model, inputs[key]))
                        for name, model in local.items()}
                runs.update({name: (lambda setting=setting, key=key: worker.request(run=setting, key=key))
                             for name, setting in remote.items()})
                results[key] = interleaved_times(runs, repeats=repeats, warmup=warmup, rotate=True)
            logits = {name: peer_worker.logits_of(model, inputs["batch"]) for name, model in local.items()}
            for name, setting in remote.items():
                path = Path(tmp) / f"{setting.replace(':', '_')}.pt"
                peer_tokens[name] = worker.request(logits=setting, key="batch", out=str(path))["tokens_out"]
                logits[name] = torch.load(path)
        finally:
            if worker is not None:
                worker.close()
        peaks = {
            name: _memory(peer_python if env == "peers" else sys.executable, setting, weights, inputs_path, threads)
            for name, (env, setting, _) in settings.items()
        } if memory else {}
        plans = {name: turbo_plan(model, tokens) for name, model in local.items() if name != "stock"}
        cost = next(model.vit.turbo_runtime.cost for name, model in local.items() if name != "stock")

    out = []
    for name, (env, setting, r) in settings.items():
        own_stock = "stock (peer env)" if env == "peers" else "stock"
        single, batch = timing_summary(results["single"][name]), timing_summary(results["batch"][name])
        stock_single, stock_batch = (statistics.median(results[key][own_stock]) for key in ("single", "batch"))
        plan = plans.get(name) or _tome_plan(r, tokens, cost, config.num_hidden_layers,
                                                   peer_tokens.get(name))
        out.append({
            "setting": name,
            "environment": env,
            "r": r,
            "final_tokens": plan["token_counts"][-1] if plan else None,
            "flops_fraction": round(plan["flops_fraction"], 5) if plan else None,
            **_agreement(logits[name], logits[own_stock]),
            "max_abs_logit_diff_vs_turbo_hf_tome": (
                float((logits[name] - logits[f"turbo-hf tome r={r}"]).abs().max()) if env == "peers" and r else None
            ),
            "latency_b1_ms": round(1000 * single["median"], 2),
            "latency_b1_spread": round(single["spread"], 3),
            "speedup_b1_vs_own_stock": round(stock_single / single["median"], 4),
            "batch_ms": round(1000 * batch["median"], 1),
            "batch_spread": round(batch["spread"], 3),
            "images_per_s": round(batch_size / batch["median"], 3),
            "speedup_batch_vs_own_stock": round(stock_batch / batch["median"], 4),
            # the least disturbed rounds: a check of the medians on a shared machine
            "speedup_b1_of_min_vs_own_stock": round(min(results["single"][own_stock]) / single["min"], 4),
            "speedup_batch_of_min_vs_own_stock": round(min(results["batch"][own_stock]) / batch["min"], 4),
            "peak_forward_rss_mib": round(peaks[name], 1) if name in peaks else None,
            "latencies_b1_ms": [round(1000 * t, 2) for t in results["single"][name]],
            "batch_times_ms": [round(1000 * t, 1) for t in results["batch"][name]],
        })
    stock_gap = _agreement(logits["stock (peer env)"], logits["stock"]) if peers else None
    return {"rows": out, "peer_versions": worker.versions if worker else None, "tokens": tokens,
            "threads": threads, "stock_peer_env_vs_this": stock_gap}


__all__ = ["PeerProcess", "run_peer_benchmark", "save_reference"]
