"""Bad input: a clear error naming what is wrong, the model left untouched, and exit code 2 from the CLI."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dropbp_core import DropBP
from dropbp_core.cli import main
from dropbp_core.errors import BackendUnavailableError, ConfigError

from .conftest import tiny_model
from .test_branches import hook_count


@pytest.mark.parametrize("kwargs,pattern", [
    ({"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\)"),
    ({"drop_rate": -0.2}, r"drop_rate must be a number in \[0, 1\)"),
    ({"drop_rate": 0.5, "rates": [0.5, 0.5]}, r"rates must hold one rate per branch \(4\)"),
    ({"drop_rate": 0.5, "sampler": "random"}, r"sampler must be one of 'bernoulli', 'pool', got 'random'"),
    ({"drop_rate": 0.5, "backend": "hpu"}, r"habana_frameworks.*not on PyPI"),
    ({"drop_rate": 0.5, "backend": "tpu"}, r"device must be one of auto, hpu, cuda, cpu"),
])
def test_api_errors_leave_model_untouched(kwargs, pattern):
    model = tiny_model("llama")
    with pytest.raises((ConfigError, BackendUnavailableError), match=pattern):
        DropBP(model, **kwargs)
    assert hook_count(model) == 0


def test_forced_mask_errors():
    dropbp = DropBP(tiny_model("llama"), 0.5)
    with pytest.raises(ConfigError, match="mask must be 4 booleans"):
        dropbp.begin_step(0, mask=[True])
    with pytest.raises(ConfigError, match="mask names unknown branches"):
        dropbp.begin_step(0, mask=["model.layers.9.mlp"])


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
    result = subprocess.run([sys.executable, "-m", "dropbp_core", "train", "--device", "hpu"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Intel's Gaudi software" in result.stderr
