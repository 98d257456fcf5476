"""Visual question answering: stock vs random / ToMe / semantic-only / Turbo, in one run.

For every setting the model answers every question with `generate()`; answers are scored with the VQA v2
accuracy of the official evaluation (`turbo_hf.evaluation.metrics.vqa_accuracy`: answer normalisation, then
min(#humans who gave the answer / 3, 1) averaged over the 10 leave-one-out subsets of the human answers),
overall and per answer type when the data has one. Speed: `generate()` on one batch with a fixed output
length. Writes <out>/<name>.json (with every answer), .md and .png.

Models: BLIP (`BlipForQuestionAnswering`), BLIP-2, InstructBLIP, LLaVA-1.5 (others are refused by name); the
prompt template (--prompt, with `{question}`) defaults per family (BLIP: the question alone; BLIP-2 /
InstructBLIP: "Question: {question} Short answer:"; LLaVA: its chat format with "Answer the question using a
single word or phrase.").

Data: columns `image`, `question` and `answers` (a list of strings, or of {"answer": ...} dicts as in
VQA v2), optionally `answer_type`:
- lmms-lab/VQAv2 (`--split validation`: image, question, answers [{answer, answer_confidence, answer_id}],
  answer_type, question_type, multiple_choice_answer); use --max-samples for a subset;
- a local .jsonl of {"image": "path.jpg", "question": "...", "answers": ["...", ...]}.

    accelerate launch scripts/eval_vqa.py --model Salesforce/blip-vqa-base --dataset lmms-lab/VQAv2 \
        --split validation --max-samples 10000 --turbo-preset blip-vqa-base --modes none,tome,turbo --r 0,40,60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

PROG = "eval_vqa.py"


def parse_args(argv=None) -> argparse.Namespace:
    from turbo_hf.evaluation.driver import add_common_arguments

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, batch_size=16)
    parser.add_argument("--question-column", default="question")
    parser.add_argument("--answers-column", default="answers",
                        help="human answers: a list of strings or of {'answer': ...} dicts (or one string)")
    parser.add_argument("--answer-type-column", default="answer_type",
                        help="optional column for per-type accuracy (ignored when absent)")
    parser.add_argument("--prompt", default=None, help="prompt template with {question} (default: per model family)")
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    return parser.parse_args(argv)


def run(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from turbo_hf.evaluation.driver import (
        GENERATIVE_FAMILIES,
        VQA_PROMPTS,
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
        run_batches,
        settings_from_args,
        text_values,
        write_outputs,
    )
    from turbo_hf.evaluation.vqa import vqa_score

    settings = settings_from_args(args)
    check_family(args.model, GENERATIVE_FAMILIES)  # before any data or weights load
    runner = Runner(cpu=args.cpu)
    with runner.main_process_first():  # downloads and dataset caches are made once
        data = load_data(args.dataset, args.split, args.dataset_config, args.where, args.max_samples, args.image_column,
                         seed=args.sample_seed)
    require_columns(data, image_column=args.image_column, question_column=args.question_column,
                    answers_column=args.answers_column)
    model = load_model(args.model, ["AutoModelForVisualQuestionAnswering", "AutoModelForImageTextToText"],
                       args.dtype, args.attn).to(runner.device)
    check_settings(model, settings)  # an unsupported model or an impossible r fails before any work
    if not hasattr(model, "generate"):
        raise UsageError(f"{type(model).__name__} cannot generate answers.")
    processor = load_processor(args.model, model)
    dtype = next(model.parameters()).dtype
    template = args.prompt if args.prompt is not None else VQA_PROMPTS.get(model_type_of(model), "{question}")
    if "{question}" not in template:
        raise UsageError(f"--prompt must contain {{question}}, got {template!r}.")

    questions = list(data[args.question_column])
    answers = [text_values(value, keys=("answer", "text")) for value in data[args.answers_column]]
    empty = [i for i, a in enumerate(answers) if not a]
    if empty:
        raise UsageError(f"Rows {empty[:5]} have no human answer in column {args.answers_column!r}.")
    answer_types = list(data[args.answer_type_column]) if args.answer_type_column in data.column_names else None

    generate_kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "do_sample": False}

    def inputs_for(indices):
        prompts = [template.format(question=questions[i]) for i in indices]
        images = data[indices][args.image_column]
        return generation_inputs(processor, images, prompts, runner.device, dtype, model), prompts

    @torch.inference_mode()
    def work(indices):
        inputs, prompts = inputs_for(indices)
        output = model.generate(**inputs, **generate_kwargs)
        predicted = decode_generated(processor, output, inputs, prompts)
        return [{"index": i, "answer": a} for i, a in zip(indices, predicted)]

    def evaluate(setting):
        records = run_batches(runner, len(data), args.batch_size, work, setting.name)
        if not runner.is_main:
            return None
        predicted = [r["answer"] for r in records]
        accuracy, per_question = vqa_score(predicted, answers)
        metrics = {"vqa_acc": accuracy, "num_samples": len(predicted)}
        if answer_types is not None:
            for kind in sorted({str(t) for t in answer_types}):
                chosen = [a for a, t in zip(per_question, answer_types) if str(t) == kind]
                metrics[f"vqa_acc_{kind}"] = 100.0 * sum(chosen) / len(chosen)
        metrics["answers"] = predicted
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
    metrics = [("vqa_acc", "VQA accuracy")]
    if answer_types is not None:
        metrics += [(f"vqa_acc_{kind}", kind) for kind in sorted({str(t) for t in answer_types})]
    notes = (
        f"Model `{args.model}`, dataset `{args.dataset}` ({len(data)} questions). Prompt template {template!r}; "
        f"beams {args.num_beams}, up to {args.max_new_tokens} new tokens. VQA v2 accuracy (official normalisation "
        "and leave-one-out averaging), in %."
    )
    write_outputs(runner, args, "vqa", rows, metrics, "Visual question answering: token reduction against the stock model",
                  notes, extra={"dataset": {"name": args.dataset, "split": args.split, "questions": len(data)},
                                "prompt": template},
                  plot_metrics=[("vqa_acc", "VQA accuracy (%)")])
    return 0


def main(argv=None) -> int:
    from turbo_hf.evaluation.driver import cli_main

    return cli_main(run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
