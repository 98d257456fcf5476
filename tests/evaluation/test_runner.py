"""`turbo_hf.evaluation.runner`: global batches dealt to processes, and the warning when `accelerate launch` runs
fewer processes than it was asked for (the real launch: tests/scripts/test_eval_scripts.py)."""

from __future__ import annotations

import pytest

from turbo_hf.evaluation import runner
from turbo_hf.evaluation.runner import Runner, launch_warning, requested_processes

SIMPLE_LAUNCH = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500"}  # what `accelerate launch --num_processes 2` (no --multi_gpu) sets


def test_requested_processes_reads_the_launcher_flags_before_the_script():
    assert requested_processes(["accelerate", "launch", "--num-processes=4", "x.py"], "x.py") == 4
    assert requested_processes(["accelerate", "launch", "--cpu", "x.py", "--num_processes", "3"], "x.py") is None
    assert requested_processes(["python", "x.py"], "x.py") is None


def test_launch_warning_names_what_was_asked_and_how_to_get_it():
    command = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--num_processes", "2", "eval.py", "--cpu"]
    message = launch_warning(1, SIMPLE_LAUNCH, command, "eval.py")
    assert "asked for 2 processes (`--num_processes 2`), but this run has 1" in message
    assert "accelerate launch --multi_gpu --num_processes 2" in message and "gloo" in message
    assert launch_warning(1, SIMPLE_LAUNCH, ["accelerate", "launch", "eval.py"], "eval.py") is None  # 1 asked
    torchrun = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}
    assert launch_warning(2, torchrun, ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "eval.py"],
                          "eval.py") is None
    assert launch_warning(1, {"MASTER_ADDR": "127.0.0.1"}, command, "eval.py") is None  # not under accelerate


def test_without_the_launcher_command_line_its_mark_in_the_environment_tells(monkeypatch):
    monkeypatch.setattr(runner, "_launcher_arguments", lambda: None)  # no /proc
    assert "asked for more than one process, but this run has 1" in launch_warning(1, SIMPLE_LAUNCH)
    assert launch_warning(1, {**SIMPLE_LAUNCH, "WORLD_SIZE": "1"}) is None
    assert launch_warning(1, {k: v for k, v in SIMPLE_LAUNCH.items() if not k.startswith("MASTER")}) is None


def test_the_runner_logs_the_warning(monkeypatch):
    messages = []
    for name, value in SIMPLE_LAUNCH.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runner, "_launcher_arguments", lambda: ["accelerate", "launch", "--num_processes", "3", "s.py"])
    monkeypatch.setattr(runner.sys, "argv", ["s.py"])
    monkeypatch.setattr(runner.logger, "warning", messages.append)
    assert Runner(cpu=True).num_processes == 1
    assert len(messages) == 1 and "asked for 3 processes" in messages[0]


def test_gathered_records_are_checked_for_duplicates_and_gaps():
    class Two(Runner):
        def __init__(self):
            pass

        num_processes, process_index, is_main = 1, 0, True

        def gather(self, records):
            return records + records  # a process's records twice

    with pytest.raises(RuntimeError, match="each of the 4 samples once"):
        runner.run_batches(Two(), 4, 2, lambda indices: [{"index": i} for i in indices], "work")
