"""Image captioning: stock vs random / ToMe / semantic-only / Turbo, in one run.

For every setting the model captions every image with `generate()`; the captions are scored against the
references with BLEU-1..4, CIDEr (CIDEr-D exactly as the COCO caption evaluation computes it, document
frequencies from the evaluated references) and ROUGE-L, all implemented in `turbo_hf.evaluation.metrics`. METEOR is
opt-in (`--meteor`): it comes through `evaluate.load("meteor")`, which downloads and runs metric code from the
Hugging Face Hub (and needs nltk); without the flag nothing is fetched and the column says n/a. Captions are tokenised like the COCO evaluation (lower case, PTB-style tokens, punctuation
dropped) before scoring. Scores are printed x100 (CIDEr 1.333 -> 133.3), as in the papers.

Speed: `generate()` on one batch with a fixed output length (min_new_tokens = max_new_tokens), so every
setting produces the same number of tokens. Writes <out>/<name>.json (with every caption), .md and .png.

Models: BLIP (`BlipForConditionalGeneration`), BLIP-2, InstructBLIP, LLaVA-1.5; other families are refused by
name before anything loads.
Default prompts: none for BLIP / BLIP-2, a short instruction for InstructBLIP and LLaVA (--prompt).

Data (an image column and one or more reference caption columns, each a string or a list of strings):
- lmms-lab/COCO-Caption2017 (`--split val --caption-column answer`: five references per image);
- nlphuji/flickr30k (`--split test --where split=test --caption-column caption`, Karpathy test);
- intro/flickr8k (`--split test --caption-column caption_0,caption_1,caption_2,caption_3,caption_4`);
- a local .jsonl of {"image": "path.jpg", "captions": ["...", "..."]}, or an imagefolder + metadata.jsonl.

    accelerate launch scripts/eval_captioning.py --model Salesforce/blip-image-captioning-base \
        --dataset lmms-lab/COCO-Caption2017 --split val --caption-column answer --max-samples 5000 \
        --turbo-preset blip-caption-base --modes none,tome,turbo --r 0,16,30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

PROG = "eval_captioning.py"


def parse_args(argv=None) -> argparse.Namespace:
    from turbo_hf.evaluation.driver import add_common_arguments

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, batch_size=16)
    parser.add_argument("--caption-column", default="captions",
                        help="reference caption column(s), comma-separated; each a string or a list of strings")
    parser.add_argument("--prompt", default=None, help="text prompt (default: per model family; '' for none)")
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--min-new-tokens", type=int, default=5)
    parser.add_argument("--meteor", action="store_true",
                        help="also score METEOR: downloads and runs the metric's code from the Hub (evaluate + nltk)")
    parser.add_argument("--no-meteor", action="store_false", dest="meteor", help=argparse.SUPPRESS)  # the old default
    return parser.parse_args(argv)


def load_meteor(enabled: bool):
    """`evaluate`'s METEOR when `enabled` (`--meteor`), or (None, reason): off, or it cannot be loaded (offline,
    nltk missing, ...). Off, `evaluate` is not even imported: nothing is fetched from the Hub."""
    if not enabled:
        return None, "off (--meteor scores it, with metric code from the Hub)"
    try:
        import evaluate

        return evaluate.load("meteor"), None
    except Exception as error:  # offline Hub, missing nltk data, ...
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def run(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from turbo_hf.evaluation.driver import (
        CAPTION_PROMPTS,
        GENERATIVE_FAMILIES,
        Runner,
        UsageError,
        check_family,
        check_settings,
        decode_generated,
        evaluate_settings,
        generation_inputs,
        inputs_by_setting,
        load_data,
        load_model,
        load_processor,
        model_type_of,
        require_columns,
        row_texts,
        run_batches,
        settings_from_args,
        split_columns,
        write_outputs,
    )
    from turbo_hf.evaluation.captions import caption_scores

    settings = settings_from_args(args)
    check_family(args.model, GENERATIVE_FAMILIES)  # before any data or weights load
    caption_columns = split_columns(args.caption_column)
    if args.min_new_tokens > args.max_new_tokens:
        raise UsageError("--min-new-tokens cannot exceed --max-new-tokens.")
    runner = Runner(cpu=args.cpu)
    with runner.main_process_first():  # downloads and dataset caches are made once
        data = load_data(args.dataset, args.split, args.dataset_config, args.where, args.max_samples, args.image_column,
                         seed=args.sample_seed)
    require_columns(data, image_column=args.image_column, caption_column=caption_columns)
    model = load_model(args.model, ["AutoModelForImageTextToText"], args.dtype, args.attn).to(runner.device)
    check_settings(model, settings)  # an unsupported model or an impossible r fails before any work
    if not hasattr(model, "generate"):
        raise UsageError(f"{type(model).__name__} cannot generate captions.")
    processor = load_processor(args.model, model)
    dtype = next(model.parameters()).dtype
    prompt = args.prompt if args.prompt is not None else CAPTION_PROMPTS.get(model_type_of(model))
    prompt = prompt or None

    references = [row_texts(row, caption_columns) for row in data.select_columns(caption_columns)]
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise UsageError(f"Rows {empty[:5]} have no reference caption in {caption_columns}.")
    meteor, meteor_reason = load_meteor(args.meteor) if runner.is_main else (None, None)
    if runner.is_main and meteor is None:
        print(f"METEOR: n/a ({meteor_reason})", file=sys.stderr)

    generate_kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
                       "min_new_tokens": args.min_new_tokens, "do_sample": False}

    def inputs_for(indices):
        prompts = [prompt] * len(indices) if prompt else None
        images = data[indices][args.image_column]
        return generation_inputs(processor, images, prompts, runner.device, dtype, model), prompts

    @torch.inference_mode()
    def work(indices):
        inputs, prompts = inputs_for(indices)
        output = model.generate(**inputs, **generate_kwargs)
        captions = decode_generated(processor, output, inputs, prompts)
        return [{"index": i, "caption": c} for i, c in zip(indices, captions)]

    def evaluate(setting):
        records = run_batches(runner, len(data), args.batch_size, work, setting.name)
        if not runner.is_main:
            return None
        captions = [r["caption"] for r in records]
        scores = caption_scores(captions, references)
        metrics = {name: 100 * value for name, value in scores.items() if name != "CIDEr_per_image"}
        metrics["METEOR"] = None
        if meteor is not None:
            try:
                result = meteor.compute(predictions=captions, references=references)
                metrics["METEOR"] = 100 * float(result["meteor"])
            except Exception as error:  # nltk data missing at compute time
                print(f"METEOR: n/a ({type(error).__name__}: {error})", file=sys.stderr)
        metrics["num_samples"] = len(captions)
        metrics["captions"] = captions
        return metrics

    timing_size = args.timing_batch_size or args.batch_size
    timing_indices = [i % len(data) for i in range(timing_size)]
    timing_inputs = inputs_by_setting(model, settings, lambda: inputs_for(timing_indices)[0])
    fixed = {**generate_kwargs, "min_new_tokens": args.max_new_tokens}

    def timing_call():
        return model.generate(**timing_inputs(), **fixed)

    rows = evaluate_settings(
        runner, model, settings, evaluate, timing_call, timing_size, timing_inputs()["pixel_values"],
        args.warmup, args.repeats, flops=not args.no_flops,
    )
    metrics = [("BLEU-4", "BLEU-4"), ("CIDEr", "CIDEr"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE-L"),
               ("BLEU-1", "BLEU-1")]
    notes = (
        f"Model `{args.model}`, dataset `{args.dataset}` ({len(data)} images, "
        f"{sum(len(r) for r in references)} references). Prompt: {prompt!r}; beams {args.num_beams}, "
        f"{args.min_new_tokens}-{args.max_new_tokens} new tokens. Scores x100; CIDEr is CIDEr-D of the COCO "
        "caption evaluation." + ("" if meteor is not None else f" METEOR n/a: {meteor_reason}.")
    )
    write_outputs(runner, args, "captioning", rows, metrics, "Image captioning: token reduction against the stock model",
                  notes, extra={"dataset": {"name": args.dataset, "split": args.split, "images": len(data)},
                                "prompt": prompt, "references": references, "meteor": meteor_reason or "evaluate"},
                  plot_metrics=[("CIDEr", "CIDEr"), ("BLEU-4", "BLEU-4")])
    return 0


def main(argv=None) -> int:
    from turbo_hf.evaluation.driver import cli_main

    return cli_main(run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
