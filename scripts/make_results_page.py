"""Regenerate benchmarks/README.md (and its plot) from the measured results in benchmarks/.

    python scripts/make_results_page.py            # reads benchmarks/*.json, writes benchmarks/README.md + .png

Inputs (nothing is re-measured here):
- benchmarks/speed_dinov2.json    from scripts/benchmark_speed.py   (real DINOv2-S/14, 224 px, CPU)
- benchmarks/quality_dinov2.json  from scripts/benchmark_quality.py (linear probe at 112 px, [CLS] fidelity at 224 px)
- any other *.json in the folder written by scripts/eval_*.py (they carry "task" and "rows") gets a
  section with its table and plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if (REPO_ROOT / "src" / "turbo_hf").is_dir() and str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

PROG = "make_results_page.py"

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench-dir", type=Path, default=REPO_ROOT / "benchmarks")
    parser.add_argument("--speed", default="speed_dinov2.json")
    parser.add_argument("--quality", default="quality_dinov2.json")
    parser.add_argument("--out", default="README.md", help="page file name inside --bench-dir")
    parser.add_argument("--plot", default="dinov2_results.png", help="plot file name inside --bench-dir")
    return parser.parse_args(argv)



def run(argv=None) -> int:
    args = parse_args(argv)
    from turbo_hf.evaluation.results_page import build_page

    page, plot = build_page(args.bench_dir, args.speed, args.quality, args.plot)
    out = args.bench_dir / args.out
    out.write_text(page)
    print(f"wrote {out}" + (f" and {plot}" if plot is not None else ""))
    return 0


def main(argv=None) -> int:
    from turbo_hf.evaluation.driver import cli_main

    return cli_main(run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
