"""``dropbp bench --config CONFIG.yaml``: benchmark settings as YAML sections of the recipe schema. Every shipped config
validates; bad ones exit 2 with every problem listed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dropbp.benchmarks.cli import BENCHMARKS
from dropbp.benchmarks.config_file import load_bench_config
from dropbp.recipes.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_bench_config_validates_and_says_how_to_run_it():
    files = sorted((ROOT / "benchmarks").rglob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        name, settings = load_bench_config(path)
        assert isinstance(settings, BENCHMARKS[name][0])
        assert f"dropbp bench --config {path.relative_to(ROOT)}" in path.read_text().splitlines()[0]


@pytest.mark.parametrize("text,needles", [
    ("benchmark: throughput\nthroughput: {steps: two, colour: red}\n",
     ["throughput.steps must be an integer, got 'two'", "unknown key throughput.colour", "has 2 problems"]),
    ("benchmark: speed\n", ["benchmark must be one of throughput, memory, convergence, regime, recipe-time, "
                           "regime-verdict, gradient-agreement, compiles, selfcheck, advise-validation, compare"]),
    ("benchmark: memory\nmemory: {budget_gb: 0}\n", ["memory.budget_gb must be a finite number in (0, inf)"]),
    ("benchmark: regime\nregime: {batch_size: 0, epochs: -1, contenders: [dropbp], seeds: [-3]}\n",
     ["has 4 problems", "regime.batch_size must be an integer >= 1", "regime.epochs must be a finite number",
      "regime.contenders must include baseline", "regime.seeds must be an integer in [0, 2**32)"]),
    ("benchmark: memory\nextra: 1\n", ["unknown key extra"]),
    ("benchmark: !!python/object/apply:os.system ['true']\n", ["refused YAML tag"]),
])
def test_bad_configs_exit_2_listing_every_problem(tmp_path, capsys, text, needles):
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    assert main(["bench", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert "Traceback" not in err and not (tmp_path / "results").exists()


@pytest.mark.slow  # a whole (small) benchmark run
def test_a_config_runs_with_overrides(tmp_path):
    out = tmp_path / "res"
    assert main(["bench", "--config", str(ROOT / "benchmarks/configs/throughput-cpu-lora.yaml"), "throughput.steps=1",
                 "throughput.warmup=0", "throughput.seq_len=16", "throughput.drop_rates=[0.5]", f"throughput.out={out}",
                 "--quiet"]) == 0
    result = json.loads((out / "throughput.json").read_text())
    assert result["settings"]["steps"] == 1 and result["settings"]["checkpointing"] is True  # the file's own value
    assert [run["drop_rate"] for run in result["runs"]] == [0.0, 0.5] and result["settings"]["out"] == str(out)
