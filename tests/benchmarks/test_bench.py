"""Benchmarks on very small runs (seconds): the JSON schema, the linear-limit arithmetic and the CLI contract.
Speed targets are not asserted here; they are checked by running the benchmarks (see benchmarks/README.md)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dropbp import backends
from dropbp.benchmarks.convergence import ConvergenceSettings, run_convergence
from dropbp.benchmarks.harness import CurvePoint, TrainRun, time_to
from dropbp.benchmarks.memory_search import GRANULARITY, longest_fitting
from dropbp.benchmarks.throughput import ThroughputSettings, linear_limit, run_throughput
from dropbp.recipes.cli import main

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)


def test_linear_limit_arithmetic():
    assert linear_limit(1.0, 3.0, 0.0) == 3.0
    assert linear_limit(1.0, 3.0, 1.0) == 1.0
    assert linear_limit(1.0, 3.0, 0.25) == pytest.approx(2.5)


@pytest.fixture(scope="module")
def small_result():
    settings = ThroughputSettings(method="lora", drop_rates=(0.5, 0.875), seq_len=32, batch_size=1, warmup=1,
                                  steps=3, memory_masks=3, model_overrides=SMALL)
    return run_throughput(settings, backends.get("cpu"), progress=False)


def test_throughput_json_schema(small_result):
    result = json.loads(json.dumps(small_result))  # JSON-serialisable
    for key in ("device", "device_name", "versions", "model_shape", "method", "seq_len", "batch_size", "sampler",
                "baseline", "all_dropped", "runs", "paper_reference"):
        assert key in result, key
    for end in ("baseline", "all_dropped"):
        for key in ("step_time_s", "tokens_per_s", "saved_activation_bytes", "peak_mem_bytes"):
            assert key in result[end], (end, key)
    assert result["baseline"]["peak_mem_bytes"] is None  # the CPU does not report a device peak
    assert [r["drop_rate"] for r in result["runs"]] == [0.0, 0.5, 0.875]
    for run in result["runs"]:
        for key in ("drop_rate", "realized_drop_fraction", "step_time_s", "tokens_per_s", "throughput_increase",
                    "ideal_step_time_s", "efficiency", "saved_activation_bytes", "peak_mem_bytes", "graph_compiles"):
            assert key in run, key
        assert run["graph_compiles"] is None
        assert len(run["step_times_s"]) == 3


def test_throughput_arithmetic_is_consistent(small_result):
    base, end = small_result["baseline"], small_result["all_dropped"]
    assert end["realized_drop_fraction"] == 1.0
    for run in small_result["runs"]:
        q = run["realized_drop_fraction"]
        ideal = end["step_time_s"] + (1 - q) * (base["step_time_s"] - end["step_time_s"])
        assert run["ideal_step_time_s"] == pytest.approx(ideal)
        assert run["efficiency"] == pytest.approx(ideal / run["step_time_s"])
        assert run["throughput_increase"] == pytest.approx(base["step_time_s"] / run["step_time_s"] - 1)
        assert run["tokens_per_s"] == pytest.approx(32 / run["step_time_s"])
    wrapped_zero = small_result["runs"][0]
    assert wrapped_zero["realized_drop_fraction"] == 0.0
    assert wrapped_zero["saved_activation_bytes"] == base["saved_activation_bytes"]  # p=0 keeps everything
    assert end["saved_activation_bytes"] < small_result["runs"][-1]["saved_activation_bytes"] < \
        base["saved_activation_bytes"]


def test_bench_cli_writes_three_files(tmp_path, capsys):
    out = tmp_path / "res"
    config = tmp_path / "small.yaml"  # a config file can set what the command line cannot (the model's shape)
    config.write_text(f"benchmark: throughput\nthroughput: {{model_overrides: {json.dumps(SMALL)}}}\n")
    code = main(["bench", "--config", str(config), "throughput.device=cpu", "throughput.drop_rates=[0.5]",
                 "throughput.seq_len=16", "throughput.batch_size=1", "throughput.warmup=0", "throughput.steps=2",
                 f"throughput.out={out}", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "throughput.json").read_text())["model_shape"]["hidden"] == SMALL["hidden_size"]
    assert sorted(p.name for p in out.iterdir()) == ["throughput.json", "throughput.md", "throughput.png"]
    assert "| baseline" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--drop-rates", "0.5,1.2"], "--drop-rates must be a number in [0, 1)"),
    (["--device", "hpu"], "Intel's Gaudi software"),
    (["--device", "cuda"], "needs an NVIDIA GPU"),
])
def test_bench_bad_input_exits_2_and_writes_nothing(tmp_path, argv, needle, capsys):
    out = tmp_path / "res"
    assert main(["bench", "throughput", "--out", str(out), *argv]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_memory_search_bisection():
    assert longest_fitting(lambda s: s <= 1000, upper=65536) == 1000 // GRANULARITY * GRANULARITY
    assert longest_fitting(lambda s: True, upper=4096) == 4096
    assert longest_fitting(lambda s: False, upper=4096) == 0
    probes = []
    longest_fitting(lambda s: s <= 5000, upper=65536, on_probe=probes.append)
    assert len(probes) < 20


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
@given(limit=st.integers(0, 20000), upper=st.integers(1, 20000), guess=st.integers(1, 30000))
@hypothesis_settings(max_examples=300, deadline=None)
def test_memory_search_from_a_guess_finds_what_doubling_finds(limit, upper, guess):
    """Starting at a guess (the memory model's answer) changes which lengths are probed, never the answer."""
    fits = lambda s: s <= limit  # noqa: E731
    assert longest_fitting(fits, upper, guess=guess) == longest_fitting(fits, upper)


def test_memory_search_from_a_close_guess_probes_fewer_long_lengths():
    plain, guessed = [], []
    longest_fitting(lambda s: s <= 11000, 16384, on_probe=plain.append)
    longest_fitting(lambda s: s <= 11000, 16384, on_probe=guessed.append, guess=10500)
    assert sum(s >= 4096 for s in guessed) < sum(s >= 4096 for s in plain)


def test_throughput_splits_forward_backward_and_optimizer(small_result):
    from dropbp.benchmarks.throughput_report import phase_table

    for entry in [small_result["baseline"], *small_result["runs"], small_result["all_dropped"]]:
        assert entry["forward_s"] > 0 and entry["backward_s"] > 0 and entry["optimizer_s"] > 0
        assert entry["forward_s"] + entry["backward_s"] + entry["optimizer_s"] == pytest.approx(
            entry["step_time_mean_s"])  # means of the phases add up to the mean step
    table = phase_table(small_result)
    assert table.splitlines()[0].startswith("| config") and "backward (ms)" in table
    assert len(table.splitlines()) == 2 + 2 + len(small_result["runs"])


def test_time_to_target_interpolates():
    curve = [CurvePoint(step=s, time_s=10.0 * s, flops=1e9 * s, val_loss=3.0 - s) for s in range(3)]
    assert time_to(curve, 1.5, "time_s") == pytest.approx(15.0)
    assert time_to(curve, 1.5, "flops") == pytest.approx(1.5e9)
    assert time_to(curve, 0.5, "time_s") is None


def test_a_train_run_survives_its_json_form():
    run = TrainRun("baseline", steps=2, train_time_s=1.5, train_flops=3e9, realized_drop_fraction=0.0,
                   curve=[CurvePoint(0, 0.0, 0.0, 3.0, examples=0), CurvePoint(2, 1.5, 3e9, 2.0, examples=16)])
    data = json.loads(json.dumps(run.to_dict()))
    assert data["final_val_loss"] == 2.0 and data["curve"][1] == {"step": 2, "time_s": 1.5, "flops": 3e9,
                                                                   "val_loss": 2.0, "examples": 16}
    assert TrainRun.from_dict(data) == run


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_convergence_small_run_and_pretrain_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPBP_CACHE", str(tmp_path))
    settings = ConvergenceSettings(drop_rates=(0.5,), pretrain_steps=2, steps=3, eval_every=1, eval_windows=2,
                                   batch_size=2, seq_len=16, corpus_bytes=50_000, max_step_factor=1.0,
                                   model_overrides=dict(SMALL, vocab_size=256))
    first = run_convergence(settings, backends.get("cpu"), progress=False)
    assert first["pretrain"]["from_cache"] is False and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert [r["label"] for r in first["runs"]] == ["baseline", "dropbp p=0.5", "dropbp p=0.875 pool",
                                                   "dropbp p=0.875 sensitivity (paper)",
                                                   "dropbp p=0.875 sensitivity (optimal)"]
    assert first["runs"][3]["rates"] != [0.875] * 4  # re-allocated from sensitivities
    assert first["runs"][0]["steps"] == 3 and len(first["runs"][0]["curve"]) == 4
    assert first["runs"][0]["time_to_target_speedup"] == 1.0
    second = run_convergence(settings, backends.get("cpu"), progress=False)
    assert second["pretrain"]["from_cache"] is True
    assert second["runs"][0]["curve"][0]["val_loss"] == first["runs"][0]["curve"][0]["val_loss"]


def test_model_auto_is_tiny_on_cpu_and_paper_shape_on_accelerators(capsys):
    from dropbp.recipes.config.options import resolve_model

    assert resolve_model("auto", backends.get("cpu")) == "tiny"
    assert resolve_model("auto", backends.CUDABackend) == "llama2-7b"
    assert resolve_model("llama3-8b", backends.get("cpu")) == "llama3-8b"
    assert main(["bench", "convergence", "--model", "llama2-7b"]) == 2
    assert "only 'tiny' is allowed" in capsys.readouterr().err


@pytest.mark.slow  # about 4 s; make test runs it
def test_memory_bench_end_to_end_longer_sequences_when_dropping(tmp_path):
    out = tmp_path / "mem"
    assert main(["bench", "memory", "--device", "cpu", "--budget-gb", "0.08", "--drop-rates", "0.875",
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "memory.json").read_text())
    baseline, dropped = result["results"]
    assert baseline["drop_rate"] is None and dropped["drop_rate"] == 0.875
    assert 0 < baseline["max_seq_len"] < dropped["max_seq_len"]
    assert sorted(p.name for p in out.iterdir()) == ["memory.json", "memory.md", "memory.png"]


@pytest.mark.slow
def test_memory_bench_searches_checkpointing_alone_and_with_dropbp(tmp_path):
    out = tmp_path / "mem"
    assert main(["bench", "memory", "--device", "cpu", "--budget-gb", "0.08", "--drop-rates", "0.875",
                 "--max-seq-len", "512", "--checkpointing", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "memory.json").read_text())
    found = {e["label"]: e for e in result["results"]}
    assert list(found) == ["baseline", "dropbp p=0.875", "checkpointing alone", "checkpointing + dropbp p=0.875"]
    base, alone = found["baseline"]["max_seq_len"], found["checkpointing alone"]["max_seq_len"]
    assert 0 < base < alone <= found["checkpointing + dropbp p=0.875"]["max_seq_len"]
    probes = found["checkpointing alone"]["probes"]
    assert all(p["recompute_bytes"] > 0 for p in probes)  # one block's recomputation counted in each probe
    for entry in result["results"]:
        assert entry["prediction_max_error"] <= 0.10, entry["label"]
    assert "checkpointing alone reaches" in (out / "memory.md").read_text()


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_bench_throughput_from_python_with_a_settings_object_and_no_argparse(tmp_path, monkeypatch, capsys):
    import argparse

    from dropbp.benchmarks import throughput

    def no_argparse(*args, **kwargs):
        raise AssertionError("argparse was used")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", no_argparse)
    settings = throughput.ThroughputSettings(device="cpu", model="tiny", method="lora", drop_rates=(0.5,), seq_len=16,
                                             batch_size=1, warmup=0, steps=2, memory_masks=1,
                                             model_overrides=SMALL, out=tmp_path / "res")
    result = throughput.main(settings, progress=False)
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["throughput.json", "throughput.md",
                                                                     "throughput.png"]
    written = json.loads((tmp_path / "res" / "throughput.json").read_text())
    assert written["settings"]["out"] == str(tmp_path / "res") and written["model_shape"]["hidden"] == 64
    assert [r["drop_rate"] for r in result["runs"]] == [0.0, 0.5] and result["sampler"] == "bernoulli"
    assert "| baseline" in capsys.readouterr().out


def test_the_checkpointing_section_names_the_pairs_at_equal_memory_and_at_equal_speed():
    from dropbp.benchmarks.throughput_report import checkpointing_section

    def choice(label, rate, step, saved):
        return {"label": label, "drop_rate": rate, "step_time_s": step, "throughput_increase": 10.0 / step - 1,
                "saved_activation_bytes": saved * 2**20, "peak_mem_bytes": None}

    result = {"baseline": choice("baseline", None, 10.0, 100),
              "runs": [choice("dropbp p=0.5", 0.5, 7.0, 50), choice("dropbp p=0.875", 0.875, 4.0, 12)],
              "checkpointed": [choice("checkpointing alone", None, 13.0, 5),
                               choice("checkpointing dropbp p=0.5", 0.5, 9.0, 4),
                               choice("checkpointing dropbp p=0.875", 0.875, 5.0, 1)]}
    advice = checkpointing_section(result)[-1]
    assert "(5.0 MiB) or less, the fastest choice is checkpointing dropbp p=0.875, +160% throughput" in advice
    assert "the least memory is checkpointing dropbp p=0.875: 1% of the baseline's saved activations, +100%" in advice
    result["checkpointed"][2]["step_time_s"] = 11.0  # now slower than the baseline: not in the equal-speed pair
    assert "the least memory is checkpointing dropbp p=0.5: 4%" in checkpointing_section(result)[-1]


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_throughput_times_checkpointing_alone_and_with_dropbp(tmp_path, capsys):
    from dropbp.benchmarks import throughput

    settings = throughput.ThroughputSettings(device="cpu", model="tiny", method="full", drop_rates=(0.75,), seq_len=32,
                                             batch_size=2, warmup=0, steps=2, memory_masks=1, checkpointing=True,
                                             model_overrides=SMALL, out=tmp_path / "res")
    result = throughput.main(settings, progress=False)
    checkpointed = {c["label"]: c for c in result["checkpointed"]}
    assert set(checkpointed) == {"checkpointing alone", "checkpointing dropbp p=0.75"}
    plain = {r["label"]: r for r in result["runs"]}
    # checkpointing keeps each block's input only: far less than the baseline, and dropping keeps less still
    alone, both = checkpointed["checkpointing alone"], checkpointed["checkpointing dropbp p=0.75"]
    assert alone["saved_activation_bytes"] < 0.5 * result["baseline"]["saved_activation_bytes"]
    assert both["saved_activation_bytes"] < alone["saved_activation_bytes"]
    assert both["step_times_s"] is not plain["dropbp p=0.75"]["step_times_s"]  # timed on their own
    assert "fastest choice is" in capsys.readouterr().out
    from dropbp.core.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be combined with --compile"):
        throughput.ThroughputSettings(device="cpu", checkpointing=True, compile=True).validate()


@pytest.mark.parametrize("argv,module,settings_class", [
    (["bench", "throughput"], "dropbp.benchmarks.throughput", "ThroughputSettings"),
    (["bench", "memory"], "dropbp.benchmarks.memory_search", "MemorySettings"),
    (["bench", "convergence"], "dropbp.benchmarks.convergence", "ConvergenceSettings"),
    (["bench", "compiles"], "dropbp.benchmarks.compiles", "CompilesSettings"),
    (["bench", "regime"], "dropbp.benchmarks.regime", "RegimeSettings"),
    (["allocate"], "dropbp.recipes.cli.allocate", "AllocateSettings"),
])
def test_command_line_defaults_are_the_settings_defaults(argv, module, settings_class):
    """Defaults live in one place: parsing no options gives exactly the dataclass's own defaults."""
    import importlib

    from dropbp.recipes.cli import build_parser
    from dropbp.recipes.config.fields import from_args

    cls = getattr(importlib.import_module(module), settings_class)
    assert from_args(cls, build_parser().parse_args(argv)) == cls()


def test_bench_compare_renders_two_cpu_result_folders_side_by_side(tmp_path, small_result):
    folders = [tmp_path / "full", tmp_path / "pool"]  # two results of this run, the second as if twice as fast
    faster = json.loads(json.dumps(small_result))
    for run in faster["runs"]:
        run["throughput_increase"] = 2 * run["throughput_increase"] + 1
    for folder, result in zip(folders, (small_result, faster)):
        folder.mkdir()
        (folder / "throughput.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    assert main(["bench", "compare", *map(str, folders), "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [d["source"] for d in doc["devices"]] == [str(f) for f in folders]
    for folder, device in zip(folders, doc["devices"]):
        original = json.loads((folder / "throughput.json").read_text())
        assert device["increase"]["0.875"] == pytest.approx(
            next(r["throughput_increase"] for r in original["runs"] if r["drop_rate"] == 0.875))
    assert doc["devices"][1]["increase"]["0.875"] > doc["devices"][0]["increase"]["0.875"]
    table = (out / "compare.md").read_text()
    assert "| 0.875 " in table and "+79%" in table and "+117%" in table  # the paper's A100 and Gaudi2 beside ours
    assert "full: " in table and "pool: " in table
    assert (out / "compare.png").stat().st_size > 0


def test_bench_compare_bad_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["bench", "compare", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "no throughput.json" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_bench_compare_reports_every_bad_folder_at_once(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "throughput.json").write_text("{")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "throughput.json").write_text("[]")
    assert main(["bench", "compare", str(tmp_path / "broken"), str(tmp_path / "foreign"), str(tmp_path / "missing"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err and "not valid JSON" in err and "not a 'dropbp bench throughput' result" in err
    assert "no throughput.json there" in err and not (tmp_path / "out").exists()
