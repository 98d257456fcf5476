"""The peers' side of the peer benchmark: a standalone worker that runs in the peers' own environment.

pruna's `token_merging` patches Transformers 4.x ViT classes (`ViTSelfAttention`, gone in 5.x), while turbo-hf
needs Transformers >= 5.23: the two cannot share a process. `turbo_hf.evaluation.peer_benchmark` starts this file
with the peers' Python (`python peer_worker.py ...`, by path: it imports nothing from turbo_hf, only torch,
transformers and the peer packages, lazily) and drives it over stdin/stdout, one JSON object per line:

- `{"run": NAME, "key": KEY}` runs setting NAME once on input KEY and answers `{"done": true}` (the caller
  times the round trip, so the peers are timed in the same interleaved rounds as turbo-hf);
- `{"logits": NAME, "key": KEY, "out": PATH}` saves the logits (float32) to PATH with `torch.save`;
- `{"quit": true}` ends it.

With `--memory NAME` it instead loads one setting, runs one forward on `--key` and prints the peak resident memory
that forward added (`peak_forward_rss_mib`, MiB): one fresh process per setting, the same measure for every
setting and environment.

Settings: `stock` (the checkpoint as loaded), `pruna:R` (pruna `token_merging`, r=R, proportional attention on),
`turbo:MODE:R` (turbo-hf, in an environment that has it).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def peer_versions() -> dict[str, str | None]:
    """Versions of the packages a peer row depends on, None for a missing one."""
    from importlib import metadata

    import torch

    versions = {"torch": torch.__version__}
    for name in ("transformers", "pruna", "timm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def require(package: str, install: str) -> None:
    """Refuse clearly when a peer package is missing from this environment."""
    from importlib.util import find_spec

    if find_spec(package) is None:
        raise SystemExit(
            f"The peer package `{package}` is not installed in {sys.executable}'s environment. Peers are not "
            f"turbo-hf dependencies; install them in their own environment: {install}"
        )


PRUNA_INSTALL = (
    "python3 -m venv /work/venv-peers && /work/venv-peers/bin/pip install torch==2.13.0 torchvision==0.28.0 "
    "'transformers<5' pruna==0.3.4 'huggingface-hub<1' 'kernels<0.15' diffusers datasets (pruna's token_merging "
    "patches Transformers 4.x ViT classes; PyPI's torchvision is built for PyPI's CUDA torch, not a +cpu one)"
)


def build_setting(name: str, weights: str, threads: int):
    """The model of one setting, in eval mode, loaded from the `weights` folder."""
    import torch
    from transformers import ViTForImageClassification

    torch.set_num_threads(threads)
    model = ViTForImageClassification.from_pretrained(weights, attn_implementation="sdpa").eval()
    kind, *args = name.split(":")
    if kind == "stock":
        return model
    if kind == "pruna":
        require("pruna", PRUNA_INSTALL)
        from pruna import SmashConfig, smash

        config = SmashConfig(device="cpu")
        config.add({"token_merging": True, "token_merging_r": int(args[0])})
        return smash(model=model, smash_config=config)
    if kind == "turbo":
        require("turbo_hf", "pip install -e <turbo-hf checkout>")
        from turbo_hf import TurboConfig, apply_turbo

        mode, r = args
        return apply_turbo(model, TurboConfig(r=int(r), mode=mode, token_order="tome" if mode == "tome" else "spatial"))
    raise SystemExit(f"Unknown setting {name!r}: expected 'stock', 'pruna:R' or 'turbo:MODE:R'.")


def logits_of(model, pixels):
    import torch

    with torch.inference_mode():
        output = model(pixel_values=pixels)
    return (output.logits if hasattr(output, "logits") else output[0]).float()


def tokens_out(model) -> int | None:
    """Tokens a pruna ToMe model kept after its last layer in its last forward (from its `_tome_info` state),
    None for other models."""
    wrapper = getattr(model, "model", model)
    info = getattr(wrapper, "_tome_info", None)
    size = None if info is None else info.get("size")
    return None if size is None else int(size.shape[1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_forward_rss_mib(model, pixels) -> float:
    """Peak resident memory one forward adds over the loaded model (MiB).

    A batch-1 forward first pages in every weight (a loaded checkpoint may still be mapped from disk). Linux: the
    high-water mark is then reset (`/proc/self/clear_refs`), so loading's peak does not hide the forward's; the
    forward's peak `VmHWM` minus `VmRSS` before it. Elsewhere, `ru_maxrss` after minus before (then 0 unless the
    forward tops the loading peak).
    """
    logits_of(model, pixels[:1])
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = _status_kib("VmRSS")
        logits_of(model, pixels)
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        logits_of(model, pixels)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def serve(models: dict, inputs: dict) -> None:
    print(json.dumps({"ready": True, "versions": peer_versions()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        if "run" in request:
            logits_of(models[request["run"]], inputs[request["key"]])
            print(json.dumps({"done": True}), flush=True)
        elif "logits" in request:
            import torch

            model = models[request["logits"]]
            torch.save(logits_of(model, inputs[request["key"]]), request["out"])
            print(json.dumps({"done": True, "tokens_out": tokens_out(model)}), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="folder of the ViTForImageClassification checkpoint")
    parser.add_argument("--inputs", required=True, help="torch.save'd dict of pixel batches")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--settings", default="", help="comma-separated settings to serve")
    parser.add_argument("--memory", default=None, help="one setting: print the peak memory of one forward")
    parser.add_argument("--key", default=None, help="input of the --memory forward")
    args = parser.parse_args(argv)
    import torch

    inputs = torch.load(args.inputs)
    if args.memory:
        model = build_setting(args.memory, args.weights, args.threads)
        print(json.dumps({"peak_rss_mib": peak_forward_rss_mib(model, inputs[args.key])}), flush=True)
        return
    serve({name: build_setting(name, args.weights, args.threads) for name in args.settings.split(",")}, inputs)


if __name__ == "__main__":
    main()
