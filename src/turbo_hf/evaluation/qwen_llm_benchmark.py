"""The Qwen2-VL benchmark of image-token reduction inside the language model (`scripts/benchmark_vlm_llm.py`).

Random weights at Qwen2-VL-7B's sequence lengths and depth, scaled down in width so the run fits a small CPU:

- vision: patch 14, 2x2 merger, temporal patch 2 (an image of R x R px gives (R/14)^2 patches and (R/28)^2 image
  tokens: 256 at 448 px, 576 at 672 px), 4 blocks of width 64;
- language model: 28 layers (like the 7B), hidden 256, 8 heads / 2 key-value heads, intermediate 688, vocabulary
  1000, mRoPE sections [4, 6, 6] (the 7B's [16, 24, 24] scaled to the head size);
- prompt: one image then ~40 text tokens (batch 1: 40; batch 2: 36 and 44, left-padded).

A real checkpoint (`checkpoint=`) replaces the random model; its token ids come from its config. Quality cannot be
measured with random weights: this measures speed, memory and the KV cache only.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn
from transformers import AutoConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchMerger, Qwen2VLDecoderLayer, Qwen2VLVisionBlock

from ..modeling.llm_token_reduction import keep_count
from ..modeling.schedules import layer_cost
from .llm_reduction_benchmark import DecodeRunner, measure_settings, random_words, shared_variant, word_ids
from .tables import markdown_table
from .timing import cpu_clocked, timed_rounds, timing_summary, timing_warnings

IMAGE, VIDEO, START, END = 996, 997, 998, 999
# Qwen2-VL-7B's language model (its vision tower is `Qwen2VLVisionConfig`'s default: 32 blocks of width 1280)
QWEN2_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4)


def build_qwen2_vl(layers: int, attn: str, checkpoint: str | None = None) -> Qwen2VLForConditionalGeneration:
    """The scaled-down random Qwen2-VL (or the checkpoint's model), in eval mode."""
    if checkpoint is not None:
        model_type = AutoConfig.from_pretrained(checkpoint).model_type
        if model_type != "qwen2_vl":
            raise ValueError(f"`checkpoint` must be a Qwen2-VL checkpoint (model_type 'qwen2_vl'); {checkpoint} holds "
                             f"a {model_type!r} model (this benchmark's shapes and cost model are Qwen2-VL's).")
        return Qwen2VLForConditionalGeneration.from_pretrained(checkpoint, attn_implementation=attn).eval()
    text = dict(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=layers,
                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1,
                eos_token_id=2, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]})
    vision = dict(depth=4, embed_dim=64, hidden_size=256, num_heads=4, mlp_ratio=4, patch_size=14)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
                           vision_start_token_id=START, vision_end_token_id=END)
    for sub in (config, config.vision_config, config.text_config):
        sub._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).eval()


def qwen_prompts(config, batch: int, resolution: int, seed: int = 0) -> dict:
    """`batch` left-padded prompts of one `resolution` px image and ~40 text tokens each."""
    vision = config.vision_config
    side = resolution // vision.patch_size
    if side % vision.spatial_merge_size:
        raise ValueError(f"A {resolution} px image gives {side} patches per side; the 2x2 merger needs an even count.")
    tokens = side * side // vision.spatial_merge_size**2
    generator = torch.Generator().manual_seed(seed)
    special = (config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id)
    vocabulary = word_ids(config.get_text_config().vocab_size, special)  # the checkpoint's ids, no special one
    texts = [40] if batch == 1 else [36 + (8 * i) // (batch - 1) for i in range(batch)]
    rows, kinds = [], []
    for count in texts:
        words = random_words(vocabulary, count, generator)
        rows.append([config.vision_start_token_id] + [config.image_token_id] * tokens + [config.vision_end_token_id]
                    + words)
        kinds.append([0] + [1] * tokens + [0] * (count + 1))
    length = max(len(row) for row in rows)
    pad = [length - len(row) for row in rows]
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    return {
        "input_ids": torch.tensor([[0] * p + row for p, row in zip(pad, rows)]),
        "attention_mask": torch.tensor([[0] * p + [1] * len(row) for p, row in zip(pad, rows)]),
        "mm_token_type_ids": torch.tensor([[0] * p + kind for p, kind in zip(pad, kinds)]),
        "pixel_values": torch.randn(batch * side * side, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[1, side, side]] * batch),
    }


def run_qwen2_vl(model, settings, resolutions, batches, repeats, warmup, new_tokens) -> list[dict]:
    """Every (resolution, batch) measured with `measure_settings`; a patched copy per setting, same weights."""
    results = []
    for resolution in resolutions:
        for batch in batches:
            inputs = qwen_prompts(model.config, batch, resolution)

            def build(turbo, inputs=inputs):
                variant = shared_variant(model, turbo)
                image_tokens = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
                return variant, inputs, {"turbo_config": turbo, "image_tokens_to_llm": image_tokens}

            rows = measure_settings(settings, build, repeats, warmup, new_tokens, positions="mrope")
            results.append({"resolution": resolution, "batch": batch, "settings": rows})
    return results


def cost_split(resolutions, layer: int, keeps, config=None) -> list[dict]:
    """Where an image's MACs are: the vision tower against the language model's layers over its image tokens, from
    the real module shapes (one block and one decoder layer built on the meta device; Qwen2-VL-7B by default), and
    what a reduction before decoder `layer` keeping each share of `keeps` saves (the text tokens not counted).

    Example:

    ```python
    >>> from turbo_hf.evaluation.qwen_llm_benchmark import cost_split
    >>> row = cost_split([448], layer=2, keeps=[0.25])[0]
    >>> row["image_tokens"], row["llm_saved_gmacs"][0.25] > row["tower_gmacs"]
    (256, True)
    ```
    """
    config = config or Qwen2VLConfig(text_config=QWEN2_VL_7B_TEXT)
    vision, text = config.vision_config, config.text_config
    with torch.device("meta"):
        tower = layer_cost(Qwen2VLVisionBlock(vision), "attn", "mlp")
        decoder = layer_cost(Qwen2VLDecoderLayer(text, 0), "self_attn", "mlp")
    rows = []
    for resolution in resolutions:
        patches = (resolution // vision.patch_size) ** 2
        tokens = patches // vision.spatial_merge_size**2
        llm = text.num_hidden_layers * decoder.macs(tokens, tokens)
        saved = {}
        for keep in keeps:
            kept = keep_count(keep, tokens)
            reduced = layer * decoder.macs(tokens, tokens) + (text.num_hidden_layers - layer) * decoder.macs(kept, kept)
            saved[keep] = (llm - reduced) / 1e9
        rows.append({"resolution": resolution, "patches": patches, "image_tokens": tokens,
                     "tower_gmacs": vision.depth * tower.macs(patches, patches) / 1e9, "llm_gmacs": llm / 1e9,
                     "llm_saved_gmacs": saved})
    return rows


def cost_markdown(rows: list[dict]) -> str:
    """The `cost_split` rows as a table."""
    keeps = list(rows[0]["llm_saved_gmacs"])
    headers = ["resolution", "patches -> image tokens", "vision tower GMACs", "LLM GMACs on image tokens",
               *[f"saved by keep {keep:g}" for keep in keeps]]
    table = [[f"{row['resolution']} px", f"{row['patches']} -> {row['image_tokens']}", f"{row['tower_gmacs']:.0f}",
              f"{row['llm_gmacs']:.0f}", *[f"{row['llm_saved_gmacs'][keep]:.0f}" for keep in keeps]] for row in rows]
    return markdown_table(headers, table)


def prefill_macs(config, inputs: dict, layer: int, keeps) -> dict:
    """MACs of one stock prefill over `inputs` from `config`'s module shapes (built on the meta device): the vision
    tower (patch embedding, every block per image, the 2x2 merger), the language model over every padded position
    (attention counted over all of them) and its head on the last token; for each share of `keeps`:

    - `tower_removable`: the fraction of the tower's MACs gone if every block ran on that share of each image's
      patches, an upper bound for a merge inside the tower (a real one runs after at least one block, keeps the
      merger's 2x2 groups whole and unmerges before the merger, which with the patch embedding stays whole);
    - `llm_saved`: the fraction of the prefill's MACs the in-LLM reduction before decoder `layer` saves.

    Example:

    ```python
    >>> from transformers import Qwen2VLConfig
    >>> from turbo_hf.evaluation.qwen_llm_benchmark import QWEN2_VL_7B_TEXT, prefill_macs, qwen_prompts
    >>> config = Qwen2VLConfig(text_config=QWEN2_VL_7B_TEXT)  # Qwen2-VL-7B, one 448 px image, 40 text tokens
    >>> cost = prefill_macs(config, qwen_prompts(config, 1, 448), layer=2, keeps=[0.25])
    >>> cost["tower_share"] * cost["tower_removable"][0.25] < cost["llm_saved"][0.25]
    True
    ```
    """
    vision, text = config.vision_config, config.text_config
    with torch.device("meta"):
        block = layer_cost(Qwen2VLVisionBlock(vision), "attn", "mlp")
        decoder = layer_cost(Qwen2VLDecoderLayer(text, 0), "self_attn", "mlp")
        merger = PatchMerger(vision.hidden_size, vision.embed_dim, vision.spatial_merge_size)
    group = vision.spatial_merge_size**2
    embed = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * vision.embed_dim
    merge = sum(m.in_features * m.out_features for m in merger.modules() if isinstance(m, nn.Linear))
    patches = inputs["image_grid_thw"].prod(-1).tolist()
    tower = sum(vision.depth * block.macs(p, p) + p * embed + p // group * merge for p in patches)
    batch, length = inputs["input_ids"].shape
    head = text.hidden_size * text.vocab_size
    llm = batch * (text.num_hidden_layers * decoder.macs(length, length) + head)
    removable, saved = {}, {}
    for keep in keeps:
        kept = [keep_count(keep, p) for p in patches]
        gone = sum(vision.depth * (block.macs(p, p) - block.macs(k, k)) for p, k in zip(patches, kept))
        removable[keep] = gone / tower
        tokens = patches[0] // group  # every prompt has one image of the same size
        short = length - (tokens - keep_count(keep, tokens))
        deep = text.num_hidden_layers - layer
        saved[keep] = batch * deep * (decoder.macs(length, length) - decoder.macs(short, short)) / (tower + llm)
    return {"tower_gmacs": tower / 1e9, "llm_gmacs": llm / 1e9, "tower_share": tower / (tower + llm),
            "tower_removable": removable, "llm_saved": saved}


def tower_split(model, resolutions, batches, repeats: int, warmup: int, layer: int, keeps, threads: int | None = None,
                reference_config=None) -> list[dict]:
    """The stock vision tower alone (`get_image_features`) against the whole stock prefill, per (resolution, batch),
    timed in interleaved rounds (`timing.timed_rounds`, wall clock and process CPU time) on `qwen_prompts`.

    Returns, per block: the `samples` (seconds per round: `wall` and `cpu` of `tower` and `prefill`), their medians
    (`tower_ms`, `prefill_ms`), `spread` ((max - min) / median of the CPU samples), `share` (`timing_summary` of the
    round-by-round tower / prefill ratio, `cpu` and `wall`), `tower_merge_bound` (the CPU share times
    `tower_removable`: the most of the prefill a merge inside the tower could save at each keep), `machine`,
    `warnings`, and `flops` (`prefill_macs` on the same prompts: `model` on the model's own shapes, `reference` on
    `reference_config`'s, by default Qwen2-VL-7B's).
    """
    reference = reference_config or Qwen2VLConfig(text_config=QWEN2_VL_7B_TEXT)
    rows = []
    for resolution in resolutions:
        for batch in batches:
            inputs = qwen_prompts(model.config, batch, resolution)
            runner = DecodeRunner(model, inputs, new_tokens=0, positions="mrope")

            def tower(inputs=inputs):
                with torch.no_grad():
                    return model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])

            cpu = {"tower": [], "prefill": []}
            runs = {"tower": cpu_clocked(tower, cpu["tower"]), "prefill": cpu_clocked(runner.prefill, cpu["prefill"])}
            timed = timed_rounds(runs, repeats, warmup, threads=threads)
            runner.output = None
            samples = {name: {"wall": timed["samples"][name], "cpu": cpu[name][warmup:]} for name in runs}
            share = {clock: timing_summary([t / p for t, p in zip(samples["tower"][clock], samples["prefill"][clock])])
                     for clock in ("cpu", "wall")}
            flops = {"model": prefill_macs(model.config, inputs, layer, keeps),
                     "reference": prefill_macs(reference, inputs, layer, keeps)}
            removable = flops["model"]["tower_removable"]
            rows.append({
                "resolution": resolution, "batch": batch, "patches_per_image": int(inputs["image_grid_thw"][0].prod()),
                "samples": samples,
                "tower_ms": {clock: statistics.median(samples["tower"][clock]) * 1000 for clock in ("cpu", "wall")},
                "prefill_ms": {clock: statistics.median(samples["prefill"][clock]) * 1000 for clock in ("cpu", "wall")},
                "spread": {name: timing_summary(samples[name]["cpu"])["spread"] for name in runs},
                "share": share, "tower_merge_bound": {k: share["cpu"]["median"] * removable[k] for k in keeps},
                "machine": timed["machine"], "warnings": timing_warnings(timed["summary"], timed["machine"]),
                "flops": flops,
            })
    return rows


def tower_versus_llm(rows: list[dict], results: list[dict]) -> list[dict]:
    """Per `tower_split` block and in-LLM setting of `run_qwen2_vl`'s same (resolution, batch): the share of the stock
    prefill that setting saved (`1 - 1 / prefill_speedup_cpu`, measured) next to the most a tower merge keeping the
    same share could save (`tower_merge_bound`) and both on the FLOP models."""
    blocks = {(block["resolution"], block["batch"]): block["settings"] for block in results}
    found = []
    for row in rows:
        for name, entry in blocks[row["resolution"], row["batch"]].items():
            if not entry["turbo_config"]:
                continue
            keep = entry["turbo_config"]["llm_keep"][0]
            flops, reference = row["flops"]["model"], row["flops"]["reference"]
            found.append({"resolution": row["resolution"], "batch": row["batch"], "setting": name, "keep": keep,
                          "in_llm_saved_cpu": 1 - 1 / entry["prefill_speedup_cpu"],
                          "in_llm_saved_flops": flops["llm_saved"][keep],
                          "tower_merge_bound": row["tower_merge_bound"][keep],
                          "reference_in_llm_saved_flops": reference["llm_saved"][keep],
                          "reference_tower_merge_bound": reference["tower_share"] * reference["tower_removable"][keep]})
    return found


def tower_markdown(rows: list[dict], versus: list[dict]) -> str:
    """The `tower_split` rows and the `tower_versus_llm` comparison as two tables."""
    def pct(value):
        return f"{value:.1%}"

    split = []
    for row in rows:
        share, flops = row["share"], row["flops"]
        spread = f"{share['cpu']['q1']:.1%} - {share['cpu']['q3']:.1%}"
        split.append([f"{row['resolution']} px", row["batch"], f"{row['tower_ms']['cpu']:.1f} ms",
                      f"{row['prefill_ms']['cpu']:.0f} ms", f"**{share['cpu']['median']:.1%}** ({spread})",
                      pct(share["wall"]["median"]), pct(flops["model"]["tower_share"]),
                      pct(flops["reference"]["tower_share"]),
                      f"{row['spread']['tower']:.0%} / {row['spread']['prefill']:.0%}",
                      f"{row['machine']['cpu_share']:.0%}"])
    headers = ["image", "batch", "tower (CPU)", "prefill (CPU)", "tower share, CPU (q1 - q3)", "share, wall",
               "share, FLOPs (this model)", "share, FLOPs (7B)", "spread t / p", "CPU share got"]
    compare = [[f"{v['resolution']} px", v["batch"], v["setting"], pct(v["tower_merge_bound"]),
                f"**{v['in_llm_saved_cpu']:.1%}**", pct(v["in_llm_saved_flops"]), pct(v["reference_tower_merge_bound"]),
                pct(v["reference_in_llm_saved_flops"])] for v in versus]
    compare_headers = ["image", "batch", "in-LLM setting", "tower merge at most (measured share)", "in-LLM saved (CPU)",
                       "in-LLM saved (FLOPs)", "tower merge at most (7B FLOPs)", "in-LLM saved (7B FLOPs)"]
    warnings = sorted({w for row in rows for w in row["warnings"]})
    notes = "".join(f"\n\n**Warning** (tower timing): {w}" for w in warnings)
    return markdown_table(headers, split) + notes + "\n\n" + markdown_table(compare_headers, compare)


def _span(values, fmt: str = ".0%") -> str:
    """`low - high` of `values` (one value when they agree to the format)."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low} - {high}"


def tower_section(towers: list[dict], versus: list[dict], config, repeats: int, layer: int,
                  checkpoint: str | None) -> str:
    """The heading, notes and decision of the measured tower / prefill split (the numbers from the run)."""
    def shapes(config) -> str:
        vision, text = config.vision_config, config.text_config
        return (f"{vision.depth} blocks of width {vision.embed_dim}, {text.num_hidden_layers} decoder layers of width "
                f"{text.hidden_size}")

    tracks = [row["share"]["cpu"]["median"] / row["flops"]["model"]["tower_share"] for row in towers]
    shares = [row["share"]["cpu"]["median"] for row in towers]
    model_flops = [row["flops"]["model"]["tower_share"] for row in towers]
    reference = [row["flops"]["reference"]["tower_share"] for row in towers]
    bound, saved = [v["tower_merge_bound"] for v in versus], [v["in_llm_saved_cpu"] for v in versus]
    ref_bound = [v["reference_tower_merge_bound"] for v in versus]
    ref_saved = [v["reference_in_llm_saved_flops"] for v in versus]
    wins = all(v["in_llm_saved_cpu"] > v["tower_merge_bound"] for v in versus)
    ref_wins = all(v["reference_in_llm_saved_flops"] > v["reference_tower_merge_bound"] for v in versus)
    verdict = ("so the in-LLM reduction saves more of the prefill than merging inside the tower could at the same "
               "keep, even were the tower merge free and perfect, and the tower merge is not built"
               if wins and ref_wins else
               "so at some keeps a tower merge could save more than the in-LLM reduction: the decision needs "
               "revisiting")
    return (
        "## How much of the stock prefill the vision tower takes (measured)\n\n"
        f"On the same {checkpoint or 'scaled random'} model and prompts: the stock vision tower alone "
        "(`model.model.get_image_features`: patch embedding, blocks, 2x2 merger) against the whole stock prefill "
        f"(the call of the tables above, tower included), timed in {repeats} interleaved rounds of their own "
        "(`timing.timed_rounds`, the benchmark's threads). *tower share, CPU*: the median over rounds of tower / "
        "prefill process CPU time, with the rounds' quartiles (the main figure; *wall*: the same from wall clock; "
        "*spread t / p*: (max - min) / median of the tower's and the prefill's CPU samples); "
        "*FLOPs*: `prefill_macs`, the tower's MACs over the prefill's (tower, every padded position through every "
        "decoder layer, the head on the last token) on this model's own shapes "
        f"({shapes(config)}) and on Qwen2-VL-7B's ({shapes(Qwen2VLConfig(text_config=QWEN2_VL_7B_TEXT))}) for the "
        "same prompts; *CPU share "
        "got*: CPU time the timed calls got over what their thread(s) asked for (below 85 %: other work competed).\n\n"
        "The second table sets the most a merge inside the tower could save of the stock prefill (*tower merge at "
        "most*: the tower share times the fraction of the tower's MACs gone if every block ran on the kept share of "
        "each image's patches; an upper bound: a real tower merge runs after at least one block, keeps the merger's "
        "2x2 groups whole and leaves the patch embedding and merger whole) against what the in-LLM setting keeping "
        f"the same share before layer {layer} saved of the stock prefill in the tables above (*in-LLM saved (CPU)*: "
        "1 - 1 / prefill x (CPU)), and both on the FLOP models.\n\n"
        f"**Decision**: the tower takes {_span(shares, '.1%')} of the measured stock prefill here (the FLOP model of "
        f"this model: {_span(model_flops, '.1%')}; measured / FLOP share {_span(tracks, '.2f')}), so a tower merge could "
        "save at "
        f"most {_span(bound)} of the prefill, against {_span(saved)} measured for the in-LLM reduction; at Qwen2-VL-7B's "
        f"shapes the tower is {_span(reference)} of the prefill's MACs, and the bound is {_span(ref_bound)} against "
        f"{_span(ref_saved)} saved by the in-LLM reduction: {verdict}."
    )


def results_markdown(results: list[dict]) -> str:
    """One table per (resolution, batch): the stock row in absolute values, the others as ratios to it."""
    parts = []
    for block in results:
        rows = []
        for name, entry in block["settings"].items():
            cache = entry["cache_tokens_per_layer"]
            if entry is next(iter(block["settings"].values())):
                cells = [f"{entry['prefill_s'] * 1000:.0f} ms", "1.00x", f"{entry['decode_per_token_s'] * 1000:.1f} ms",
                         "1.00x", f"{entry['peak_tensor_mb']:.0f} MB", f"{entry['kv_cache_mb']:.2f} MB"]
            else:
                cells = [f"{entry['prefill_speedup']:.2f}x", f"{entry['prefill_speedup_cpu']:.2f}x",
                         f"{entry['decode_speedup']:.2f}x", f"{entry['decode_speedup_cpu']:.2f}x",
                         f"{entry['peak_memory_ratio']:.2f}", f"{entry['kv_cache_ratio']:.2f}"]
            spread = f"{entry['prefill_spread']:.0%} / {entry['decode_spread']:.0%}"
            rows.append([name, entry["image_tokens_to_llm"], f"{cache[0]} / {cache[-1]}",
                         f"{entry['token_layer_limit']:.2f}x", *cells, spread])
        headers = ["setting", "image tokens / image", "cache tokens (layer 0 / last)", "limit", "prefill",
                   "prefill x (CPU)", "decode / token", "decode x (CPU)", "peak mem", "KV cache", "spread p / d"]
        parts += [f"## {block['resolution']} px, batch {block['batch']}", "", markdown_table(headers, rows), ""]
    return "\n".join(parts)


__all__ = ["build_qwen2_vl", "cost_markdown", "cost_split", "prefill_macs", "qwen_prompts", "results_markdown",
           "run_qwen2_vl", "tower_markdown", "tower_section", "tower_split", "tower_versus_llm"]
