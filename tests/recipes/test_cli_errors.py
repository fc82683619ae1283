"""The command line refuses bad input with exit code 2 and one paragraph naming the field, before any work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dropbp.recipes.cli import main


@pytest.mark.parametrize("argv,needle", [
    (["train", "tiny-tasks", "dropbp.drop_rate=1.5"], "dropbp.drop_rate must be a number in [0, 1)"),
    (["train", "tiny-tasks", "--device", "hpu"], "habana_frameworks"),
    (["train", "tiny-tasks", "--device", "cuda"], "needs an NVIDIA GPU"),
    (["train", "tiny-tasks", "--device", "cpu", "model.name=/no/such/model", "model.config={}"],
     "model.name must be a preset (tiny, deep, llama2-7b"),
    (["bench", "throughput", "--device", "cpu", "--model", "llama2-70b", "--method", "full"],
     "--model llama2-70b needs about"),
])
def test_cli_errors_exit_2_with_one_paragraph(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_unknown_sampler_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "throughput", "--sampler", "random"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'random'" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_hpu_without_sdk_has_no_traceback():
    result = subprocess.run([sys.executable, "-m", "dropbp.recipes", "train", "tiny-tasks", "--device", "hpu"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Intel's Gaudi software" in result.stderr


def test_allocate_cli_refuses_infeasible_rate_before_any_work(tmp_path, capsys):
    assert main(["allocate", "--drop-rate", "0.95", "--cap", "0.9", "--out", str(tmp_path / "a")]) == 2
    assert "infeasible with cap 0.9" in capsys.readouterr().err and not (tmp_path / "a").exists()



def test_allocate_cli_reports_every_problem_at_once(tmp_path, capsys):
    assert main(["allocate", "--drop-rate", "2", "--cap", "0", "--seq-len", "0", "--batch-size", "0",
                 "--data", "no-such-recipe", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    for needle in ("--drop-rate must be", "--cap must be", "--seq-len must be", "--batch-size must be",
                   "'no-such-recipe' is neither"):
        assert needle in err, err
    assert "5 problems" in err and "Traceback" not in err and not (tmp_path / "a").exists()

HUGE_SEED = str(2**64 + 1)
# (command, bad options, what the one-paragraph error must say); each must exit 2 before any work or any file
MATRIX = [
    *[(command, ["--seed", HUGE_SEED], "--seed must be an integer in [0, 2**32)") for command in
      (["allocate"], ["bench", "throughput"], ["bench", "memory"], ["bench", "convergence"], ["bench", "compiles"])],
    (["bench", "throughput"], ["--seed", "-1"], "--seed must be an integer in [0, 2**32)"),
    *[(command, ["--out", "/proc/dropbp-results"], "cannot be written") for command in
      (["allocate"], ["bench", "throughput"], ["bench", "memory"], ["bench", "convergence"], ["bench", "compiles"])],
    *[(command, ["--model", "llama9-1b"], "is none of these (no such folder)") for command in
      (["allocate"], ["bench", "throughput"], ["bench", "memory"])],
    (["bench", "convergence"], ["--model", "llama9-1b"], "only 'tiny' is allowed"),
    *[(command, ["--drop-rate", "nan"], "--drop-rate must be a number in [0, 1)") for command in
      (["allocate"], ["bench", "compiles"])],
    *[(command, ["--drop-rates", "0.5,nan"], "--drop-rates must be a number in [0, 1)") for command in
      (["bench", "throughput"], ["bench", "memory"], ["bench", "convergence"])],
    *[(command, ["--lr", value], "--lr must be a finite number in (0, inf)") for command in
      (["bench", "throughput"], ["bench", "convergence"]) for value in ("nan", "-1", "inf")],
    *[(["bench", "memory"], ["--budget-gb", value], "--budget-gb must be a finite number in (0, inf)")
      for value in ("nan", "inf", "0", "-1")],
    (["bench", "compiles"], ["--compile-backend", "nosuchbackend"], "--compile-backend must be a torch.compile"),
    (["bench", "throughput"], ["--compile", "--compile-backend", "nosuchbackend"],
     "--compile-backend must be a torch.compile"),
    *[(command, ["--seq-len", "1000000"], "--seq-len must be at most 8192") for command in
      (["allocate"], ["bench", "throughput"])],
    *[(command, ["--pool-size", "0"], "--pool-size must be an integer >= 1") for command in
      (["bench", "throughput"], ["bench", "memory"], ["bench", "convergence"], ["bench", "compiles"])],
    (["allocate"], ["--cap", "nan"], "--cap must be a finite number in (0, 1)"),
    *[(command, ["--steps", "0"], "--steps must be an integer >= 1") for command in
      (["bench", "throughput"], ["bench", "convergence"], ["bench", "compiles"])],
    # dropbp train takes a recipe and key=value overrides
    (["train", "tiny-tasks"], [f"train.seed={HUGE_SEED}"], "train.seed must be an integer in [0, 2**32)"),
    (["train", "tiny-tasks"], ["train.seed=-1"], "train.seed must be an integer in [0, 2**32)"),
    (["train", "tiny-tasks"], ["model.name=llama9-1b", "model.config={}"], "is none of these (no such folder)"),
    (["train", "tiny-tasks"], ["dropbp.drop_rate=nan"], "dropbp.drop_rate must be a number in [0, 1)"),
    *[(["train", "tiny-tasks"], [f"optim.lr={value}"], "optim.lr must be a finite number in (0, inf)")
      for value in ("nan", "-1", "inf")],
    (["train", "tiny-tasks"], ["data.seq_len=1000000"], "data.seq_len must be at most 8192"),
    (["train", "tiny-tasks"], ["dropbp.allocate_at=1.5"], "dropbp.allocate_at must be a finite number in [0, 1)"),
    (["train", "tiny-tasks"], ["dropbp.sampler=bernoulli", "dropbp.pool_size=0"],
     "dropbp.pool_size must be an integer in 1..65536"),
    (["train", "tiny-tasks"], ["train.steps=0"], "train.steps must be an integer >= 1"),
    (["train", "tiny-tasks"], ["--output-dir", "/proc/dropbp-run"], "cannot be written"),
]


@pytest.mark.parametrize("command,options,needle", MATRIX,
                         ids=[" ".join(c + o) for c, o, _ in MATRIX])
def test_every_command_refuses_each_bad_value_before_any_work(tmp_path, monkeypatch, capsys, command, options,
                                                             needle):
    monkeypatch.chdir(tmp_path)  # the default results folder would be ./results
    out = [] if command[0] == "train" or "--out" in options else ["--out", str(tmp_path / "res")]
    assert main([*command, *options, *out]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output folder, nothing written


@pytest.mark.parametrize("command", [["allocate"], ["bench", "throughput"], ["bench", "memory"]])
def test_an_existing_file_as_output_folder_is_refused(tmp_path, capsys, command):
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    assert main([*command, "--out", str(existing)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err and existing.read_text() == "keep me"


def test_argparse_level_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "convergence", "--method", "qlora"])
    assert exit_info.value.code == 2 and "invalid choice: 'qlora'" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_during_import_and_during_work_exits_130_without_traceback(tmp_path):
    """SIGINT while torch is still importing: "interrupted", exit 130, no traceback. SIGINT once training runs (the
    stop handlers are installed before "training ..." is printed): the step finishes, a checkpoint is saved and the
    message says how to resume, exit 130, no traceback. (Latency is measured by hand, not asserted here.)"""
    import signal
    import time

    script = [sys.executable, "-m", "dropbp.recipes", "train", "tiny-tasks", "--device", "cpu", "train.steps=100000",
              "train.eval_every=0", "train.exact_match=0", "--output-dir", str(tmp_path / "run")]
    for wait_for_training in (False, True):
        child = subprocess.Popen(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        if wait_for_training:
            assert child.stdout.readline().startswith("training tiny-tasks")  # the run has started
        else:
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 130, err
        assert "Traceback" not in err, err
        if wait_for_training:
            assert "received SIGINT: saved a checkpoint at step" in err and "--resume" in err, err
            assert any((tmp_path / "run" / "checkpoints").iterdir())
        else:
            assert "interrupted" in err, err


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_allocate_measures_on_a_recipes_labelled_batch(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["allocate", "--model", "tiny", "--method", "lora", "--data", "tiny-tasks", "--batch-size", "2",
                 "--out", str(out)]) == 0
    import json

    result = json.loads((out / "allocate.json").read_text())
    assert result["data"] == "tiny-tasks" and result["seq_len"] == 40  # the recipe's windows, not --seq-len
    assert len(result["branches"]) == 8 and any(b["sensitivity"] > 0 for b in result["branches"])
    assert main(["allocate", "--data", "no-such-recipe", "--out", str(tmp_path / "b")]) == 2
    assert "recipe 'no-such-recipe' is neither a file nor a shipped recipe" in capsys.readouterr().err


def test_a_settings_field_named_overrides_parses_from_the_command_line():
    """`dropbp bench recipe-time --overrides ...`: its tuple field is not the recipe's key=value list of train."""
    from dropbp.benchmarks.cli import register as register_bench
    from dropbp.recipes.cli import parse

    args = parse(["bench", "recipe-time", "--recipe", "tiny-tasks", "--overrides", "train.steps=4,train.seed=1"],
                 [register_bench])
    assert tuple(args.overrides) == ("train.steps=4", "train.seed=1")
    assert parse(["train", "tiny-tasks", "--device", "cpu", "train.steps=2"]).overrides == ["train.steps=2"]
    with pytest.raises(SystemExit):  # a stray key=value after a benchmark's options is an argparse error
        parse(["bench", "recipe-time", "--recipe", "tiny-tasks", "train.steps=2"], [register_bench])
