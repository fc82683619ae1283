"""The command line refuses bad input with exit code 2 and one paragraph naming the field, before any work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dropbp.recipes.cli import main


@pytest.mark.parametrize("argv,needle", [
    (["train", "--drop-rate", "1.5"], "--drop-rate must be a number in [0, 1)"),
    (["train", "--device", "hpu"], "habana_frameworks"),
    (["train", "--device", "cuda"], "needs an NVIDIA GPU"),
    (["train", "--device", "cpu", "--model", "/no/such/model"], "--model must be a preset (tiny, llama2-7b"),
    (["bench", "throughput", "--device", "cpu", "--model", "llama2-70b", "--method", "full"],
     "--model llama2-70b needs about"),
])
def test_cli_errors_exit_2_with_one_paragraph(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_unknown_sampler_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--sampler", "random"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'random'" in capsys.readouterr().err


def test_console_script_hpu_without_sdk_has_no_traceback():
    result = subprocess.run([sys.executable, "-m", "dropbp.recipes", "train", "--device", "hpu"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Intel's Gaudi software" in result.stderr


def test_allocate_cli_refuses_infeasible_rate_before_any_work(tmp_path, capsys):
    assert main(["allocate", "--drop-rate", "0.95", "--cap", "0.9", "--out", str(tmp_path / "a")]) == 2
    assert "infeasible with cap 0.9" in capsys.readouterr().err and not (tmp_path / "a").exists()
