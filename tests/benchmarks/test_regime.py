"""The time-to-accuracy benchmark on a very small run: its plan, its result schema, and resuming from cached runs."""
from __future__ import annotations

import json

import pytest

from dropbp import backends
from dropbp.core.step_flops import StepFlops
from dropbp.benchmarks.regime import RegimeSettings, plan, regime_figure, regime_markdown, run_regime, task_data
from dropbp.benchmarks.regime.run import pretrain_stream, pretrain_text
from dropbp.benchmarks.study import study_schedule
from dropbp.core.errors import ConfigError

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256)


def small(**changes) -> RegimeSettings:
    fields = dict(epochs=0.02, pretrain_steps=2, lrs=(1e-3, 3e-3), seeds=(0, 1), drop_rates=(0.5,), eval_every=3,
                  batch_size=8, warmup_steps=2, model_overrides=SMALL)
    return RegimeSettings(device="cpu", **{**fields, **changes})


def test_plan_sets_the_alternatives_to_dropbps_flops():
    contenders = plan(RegimeSettings(), num_layers=16, total_steps=368)
    labels = [c.label for c in contenders]
    assert labels[0] == "baseline" and "LayerDrop p=0.375" in labels and "freeze: top 4 of 16" in labels
    assert len([c for c in contenders if c.kind == "dropbp"]) == 3
    pld = next(c for c in contenders if c.kind == "pld")
    from dropbp.core.layerdrop import pld_mean_drop

    extra = dict(pld.options)
    assert pld_mean_drop(extra["theta_bar"], extra["gamma"], 16, 368) == pytest.approx(0.375)


def test_flops_model_counts_skipped_dropped_and_frozen_work():
    from dropbp.recipes.model.build import apply_method, build_model

    model = apply_method(build_model("tiny", **SMALL), "lora")
    flops = StepFlops(model, seq_len=40)
    full = flops.step(1)
    everything_dropped = flops.step(1, no_backward=(True,) * 8)
    all_skipped = flops.step(1, skipped_blocks=(True,) * 4)
    assert all_skipped < everything_dropped < full
    assert flops.step(1, trained_from=4) == everything_dropped  # nothing trained in the blocks: forward only
    assert full - everything_dropped == pytest.approx(sum(flops.flops))  # LoRA backward ~ one forward
    # rates instead of masks give the expected FLOPs: half of every backward dropped saves half as much
    assert flops.saved_fraction(no_backward=[0.5] * 8) == pytest.approx((full - everything_dropped) / (2 * full))
    assert flops.saved_fraction(skipped_blocks=[1.0] * 4) == pytest.approx(1 - all_skipped / full)


@pytest.mark.slow
def test_small_regime_run_publishes_and_resumes_from_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPBP_CACHE", str(tmp_path / "cache"))
    cpu = backends.get("cpu")
    first = run_regime(small(), cpu, progress=False)
    result = json.loads(json.dumps(first))
    labels = [row["label"] for row in result["summary"]]
    assert labels[0] == "baseline" and len(labels) == 1 + 1 + 1 + 3
    assert set(result["chosen_lr"]) == set(labels) and all(lr in (1e-3, 3e-3) for lr in result["chosen_lr"].values())
    assert len(result["runs"]) == len(labels) * 2
    for run in result["runs"]:
        assert run["curve"][0]["step"] == 0 and run["curve"][-1]["step"] == run["steps"]
        assert 0 <= run["final_exact_match"] <= 1
    baseline = result["summary"][0]
    assert baseline["time_saved"]["mean"] == 0 and baseline["reached_target"] == 2
    cached = list((tmp_path / "cache").glob("studies/regime-*/run-*.json"))
    # 2 sweep rates on seed 0, then seed 1 at the chosen rate; then 2 seeds at the baseline's time for every
    # contender whose length there differs (the others keep their equal-steps runs)
    retrained = [r for r in result["equal_time_runs"] if r["steps"] != result["steps_per_run"]]
    assert len(cached) == len(labels) * 3 + len(retrained) and len(result["equal_time_runs"]) == len(labels) * 2
    cached[0].unlink()  # as if interrupted before that run finished: only that run trains again
    again = run_regime(small(), cpu, progress=False)
    assert again["pretrain"]["from_cache"] is True
    assert len(list((tmp_path / "cache").glob("studies/regime-*/run-*.json"))) == len(cached)
    fewer = run_regime(small(contenders=("baseline", "dropbp")), cpu, progress=False)  # a subset: nothing trains
    assert len(list((tmp_path / "cache").glob("studies/regime-*/run-*.json"))) == len(cached)
    def trained(run):  # what training produced; the times are the study's step-time model's
        return [(p["step"], p["flops"], p["val_loss"]) for p in run["curve"]], run["measured_time_s"]

    assert [trained(r) for r in fewer["runs"][:2]] == [trained(r) for r in again["runs"][:2]]
    model = again["step_time_model"]
    assert model["per_flop_s"] > 0 and {p["label"] for p in model["points"]} >= {"baseline", "DropBP p=0.5"}
    assert fewer["step_time_model"] == model  # the subset reads its runs through the same model
    assert {"LayerDrop", "freeze"} <= {label.split(" ")[0].rstrip(":") for label in model["scales"]}
    for run in again["runs"] + again["equal_time_runs"]:  # every time is the model's reading of steps and FLOPs
        scale = model["scales"].get(run["label"], 1.0)  # LayerDrop, PLD, freezing: their own factor
        for point in run["curve"]:
            assert point["time_s"] == pytest.approx(scale * (model["per_step_s"] * point["step"]
                                                             + model["per_flop_s"] * point["flops"]))
        assert run["measured_time_s"] > 0
    assert len(list((tmp_path / "cache").glob("studies/regime-*/step-time-*.json"))) == 1  # one for any subset
    table = regime_markdown(again)
    for row in again["summary"]:  # every contender has its row, with its chosen learning rate
        assert f"| {row['label']} " in table and f"| {row['lr']:g} " in table
    assert "**Equal epochs.**" in table and "Learning-rate sweep" in table
    figure = regime_figure(again)
    assert len(figure.axes) == 2 * (3 if again["equal_time_runs"] else 2)  # loss and exact match per column
    lines = {line.get_label() for line in figure.axes[0].get_lines()}
    assert {row["label"] for row in again["summary"]} <= lines
    from dropbp.benchmarks.study import equal_time_steps

    steps = again["steps_per_run"]
    base_time = sum(r["train_time_s"] for r in again["runs"] if r["kind"] == "baseline") / 2
    for row in again["summary"][1:]:  # the one equal-time rule: steps scaled by the baseline's time over its own
        own = sum(r["train_time_s"] for r in again["runs"] if r["label"] == row["label"]) / 2
        longer = [r for r in again["equal_time_runs"] if r["label"] == row["label"]]
        expected = equal_time_steps(steps, base_time, own)
        assert [r["steps"] for r in longer] == [expected if abs(expected - steps) > 0.05 * steps else steps] * 2
        if row["equal_time"] is not None:
            assert row["equal_time"]["epochs"] == pytest.approx(0.02 * expected / steps, rel=0.1)


def test_the_run_cache_key_ignores_settings_that_only_read_runs():
    from dropbp.benchmarks.regime import runs_key

    cpu = backends.get("cpu")
    key = runs_key(small(), cpu)
    assert runs_key(small(time_model=False, equal_time=False, contenders=("baseline",), drop_rates=(0.01,),
                          schedules=("linear",)), cpu) == key
    assert runs_key(small(epochs=0.03), cpu) != key


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_regimes_differ_in_what_pretraining_saw_and_families_in_what_is_fine_tuned():
    strings, numbers = task_data(40, "strings"), task_data(48, "numbers")
    assert len(strings.train_ids) == 5888 and len(numbers.train_ids) == 3800
    with pytest.raises(ConfigError, match="regime.seq_len: the numbers tasks need 46 tokens"):
        task_data(40, "numbers")
    assert bytes(strings.train_ids[0].tolist()).count(b".") == 1  # the instruction's full stop only
    adapted = task_data(40, "strings", "adapt")
    answer = adapted.train_ids[0][adapted.train_labels[0] != -100].tolist()
    assert bytes(answer[:-1]).endswith(b".")  # the adapt regime's style: a final full stop (then the end token)
    record = {"instruction": "Double the number.", "input": "12", "output": "24"}
    assert pretrain_text(record) == "Double the number.\n12\n24"  # the fine-tuning's own format, no style
    learn_tasks = bytes(pretrain_stream("numbers", "learn")[1].tolist())
    adapt_tasks = bytes(pretrain_stream("numbers", "adapt")[1].tolist())
    assert b"Double" not in learn_tasks and b"capitals" in learn_tasks
    assert b"Double the number.\n" in adapt_tasks and b"capitals" not in adapt_tasks


@pytest.mark.parametrize("change,needle", [(dict(contenders=("dropbp",)), "include baseline"),
                                           (dict(regime="relearn"), "--regime"), (dict(family="words"), "--family"),
                                           (dict(schedules=("exp",)), "--schedules"),
                                           (dict(lrs=()), "--lrs"), (dict(epochs=0), "--epochs"),
                                           (dict(method="qlora"), "multiples of 64.*here hidden_size = 32")])
def test_regime_settings_errors(change, needle):
    with pytest.raises(ConfigError, match=needle):
        small(**change).validate()


def test_plan_offers_schedules_and_freeze_with_dropbp():
    settings = RegimeSettings(contenders=("baseline", "schedule", "freeze-dropbp"),
                              schedules=("cosine", "linear", "warmup"))
    contenders = plan(settings, num_layers=16, total_steps=368)
    assert [c.label for c in contenders] == ["baseline", "DropBP cosine 0.75 -> 0", "DropBP linear 0.75 -> 0",
                                             "DropBP p=0.75 after warm-up", "freeze: top 8 of 16 + DropBP p=0.75"]
    warmup = study_schedule("warmup", 100)
    assert [warmup.rate_at(step, 0.75) for step in (0, 24, 25, 99)] == [0.0, 0.0, 0.75, 0.75]
    assert study_schedule("linear", 100).rate_at(50, 0.75) == pytest.approx(0.375)
    assert RegimeSettings().contenders == ("baseline", "dropbp", "sensitivity", "layerdrop", "pld", "freeze")


@pytest.mark.slow
def test_the_new_contenders_train_and_charge_their_flops(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPBP_CACHE", str(tmp_path / "cache"))
    settings = small(lrs=(1e-3,), seeds=(0,), equal_time=False,
                     contenders=("baseline", "schedule", "freeze-dropbp"))
    result = run_regime(settings, backends.get("cpu"), progress=False)
    runs = {run["kind"]: run for run in result["runs"]}
    assert set(runs) == {"baseline", "schedule", "freeze-dropbp"}
    assert "One learning rate (lr 0.001): no sweep." in regime_markdown(result)  # the report of a study with no sweep
    assert runs["schedule"]["train_flops"] < runs["baseline"]["train_flops"]
    assert runs["freeze-dropbp"]["train_flops"] < runs["schedule"]["train_flops"]
    assert runs["baseline"]["realized_drop_fraction"] == 0.0 < runs["schedule"]["realized_drop_fraction"]


def _verdict_study() -> dict:
    """A regime result of two seeds: the baseline, and ``q`` that reaches its loss twice as soon in seed 0 and ends
    +20% in seed 1."""
    def run(label, family, seed, losses, matches, epochs=1.0):
        curve = [{"step": i, "time_s": 10.0 * i, "flops": 0.0, "val_loss": loss, "exact_match": match}
                 for i, (loss, match) in enumerate(zip(losses, matches))]
        return {"label": label, "family": family, "seed": seed, "epochs": epochs, "curve": curve,
                "final_val_loss": losses[-1], "final_exact_match": matches[-1]}

    base = [run("baseline", "baseline", s, [2.0, 1.0, 0.5], [0.0, 0.5, 0.9]) for s in (0, 1)]
    quick = [run("q", "dropbp", 0, [2.0, 0.5, 0.4], [0.0, 0.9, 0.95]),  # reaches 0.5 at 10 s, not 20: 2x
             run("q", "dropbp", 1, [2.0, 1.5, 0.6], [0.0, 0.5, 0.85])]  # +20% loss, -5 points: does not hold
    quick[0]["realized_drop_fraction"], quick[1]["realized_drop_fraction"] = 0.5, 0.25
    return {"settings": {"regime": "adapt", "family": "numbers"}, "runs": base + quick, "equal_time_runs": [],
            "summary": [{"label": "baseline", "family": "baseline"}, {"label": "q", "family": "dropbp"}]}


def test_the_verdict_table_compares_each_seed_with_its_baseline_at_equal_time():
    from dropbp.benchmarks.regime.verdict import study_rows, verdict_markdown

    result = _verdict_study()
    (row,) = study_rows(result)
    assert row["holds"] == 1 and row["loss_speedup"] == [2.0] and row["match_speedup"] == [2.0]
    assert row["loss_ratio"] == pytest.approx((0.8 + 1.2) / 2)
    assert row["drop"] == pytest.approx(0.375)
    assert "| adapt, numbers | step clock | q " in verdict_markdown([result])
    assert "2.00x (1/2)" in verdict_markdown([result]) and "| 0.38 " in verdict_markdown([result])  # realised drop
    result["settings"]["seeds"], result["step_time_model"] = [3, 4], {"per_step_s": 0.0}
    assert "| adapt, numbers, seeds 3, 4 | model | q " in verdict_markdown([result])


def test_the_verdict_is_a_bench_command_that_writes_one_set_and_refuses_foreign_files(tmp_path, capsys):
    import json

    from dropbp.recipes.cli import main

    result = _verdict_study()
    study = tmp_path / "regime-adapt-numbers.json"
    study.write_text(json.dumps(result))
    assert main(["bench", "regime-verdict", str(study), "--out", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "regime-verdict.json").read_text())
    assert written["studies"][0]["rows"][0]["label"] == "q" and (tmp_path / "out" / "regime-verdict.png").is_file()
    assert "| adapt, numbers | step clock | q " in (tmp_path / "out" / "regime-verdict.md").read_text()
    foreign = tmp_path / "throughput.json"
    foreign.write_text(json.dumps({"benchmark": "throughput"}))
    capsys.readouterr()
    assert main(["bench", "regime-verdict", str(foreign), "--out", str(tmp_path / "refused")]) == 2
    assert "not a dropbp bench regime result" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
