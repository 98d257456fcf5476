"""Run several evaluation scripts' `main(argv)` one after the other in this process.

`tests/scripts/test_eval_scripts.py` launches this file once under `accelerate launch --multi_gpu --num_processes 2`,
so every (script, family) run it checks shares one start-up (imports, the gloo process group) instead of paying
for it once per run. Usage: `python launch_runs.py RUNS.json`, a JSON list of `[script name, argv]`; after run `i`
the main process writes `RUNS.json.<i>.done` (so a test can check it while the next ones run); it stops at the
first run that does not end with code 0 and exits with that code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    """The module `scripts/<name>.py` (the scripts are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(path: str) -> int:
    for index, (name, argv) in enumerate(json.loads(Path(path).read_text())):
        code = load_script(name).main(argv)
        if code:
            print(f"launch_runs: {name} {' '.join(argv)} ended with code {code}", file=sys.stderr)
            return code
        if os.environ.get("RANK", "0") == "0":
            Path(f"{path}.{index}.done").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
