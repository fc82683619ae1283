"""``dropbp selfcheck --device cpu``: the same code as on a GPU or Gaudi, at a small shape; every part runs and the
summary line reports it."""
from __future__ import annotations

import json

import pytest

from dropbp.benchmarks.selfcheck import SelfcheckSettings, check_engine, main
from dropbp.backends import get


def test_engine_check_passes_on_the_cpu_and_catches_a_leak(monkeypatch):
    result = check_engine(get("cpu"))
    assert result["passed"] and result["exact_on_cpu"] and result["fp32_relative_error"] == 0.0
    assert 0 < result["bf16_relative_error"] <= result["bf16_tolerance"]
    from dropbp.core import engine

    monkeypatch.setattr(engine.DropBP, "_before_branch", lambda self, index, module, args, kwargs: None)
    assert not check_engine(get("cpu"))["passed"]


@pytest.mark.slow
def test_selfcheck_on_the_cpu_writes_results_and_one_summary_line(tmp_path, capsys):
    settings = SelfcheckSettings(device="cpu", out=tmp_path, steps=2, compile_steps=4, pool_size=2,
                                 model_overrides=dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    main(settings, progress=False)
    result = json.loads((tmp_path / "selfcheck.json").read_text())
    assert result["engine"]["passed"] and set(result["throughput"]) == {"bernoulli", "pool"}
    for run in result["throughput"].values():
        assert [r["drop_rate"] for r in run["runs"]] == [0.0, 0.5, 0.75, 0.875]
    assert 0 < result["compiles"]["graphs_compiled"] <= 2  # the pool holds 2 masks: at most 2 graphs
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("selfcheck cpu") and "engine OK" and "paper: +79% (A100), +117% (Gaudi2)" in last
    assert (tmp_path / "selfcheck.md").exists() and (tmp_path / "selfcheck.png").exists()
