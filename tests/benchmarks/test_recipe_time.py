"""The recipe-time benchmark on a few steps: three runs per seed, equal time from the step-time model (or the step
clock), the verdict; and the recipe's step-time calibration."""
from __future__ import annotations

import math
import re
import statistics

import pytest

from dropbp import backends
from dropbp.benchmarks.recipe_time import RecipeTimeSettings, recipe_time_figure, recipe_time_markdown, run_recipe_time
from dropbp.benchmarks.harness import CurvePoint, speedup_to
from dropbp.benchmarks.step_time_model import StepTimeModel
from dropbp.core.errors import ConfigError

SMALL = ("model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
         "num_key_value_heads: 1}", "train.steps=6", "train.exact_match=4", "train.micro_batch_size=8")
FREEZE = (*SMALL, "dropbp.technique=freeze", "technique.train_top_layers=1", "dropbp.schedule.kind=constant")


def within_margins(row: dict) -> bool:
    base, timed = row["baseline"], row["equal_time"]
    return timed["val_loss"] <= base["val_loss"] * 1.03 and timed["exact_match"] >= base["exact_match"] - 0.02


@pytest.mark.slow
def test_the_recipe_as_shipped_against_dropbp_off_at_the_baselines_time(tmp_path):
    settings = RecipeTimeSettings(device="cpu", overrides=SMALL, seeds=(0,), out=tmp_path, time_model=False,
                                  curve_every=3)
    result = run_recipe_time(settings, backends.get("cpu"), progress=False)
    (row,) = result["extras"]["contenders"][0]["seeds"]
    assert len(row["curves"]["baseline"]) == 3  # evaluated at steps 0, 3 and 6
    assert [p["time_s"] for p in row["curves"]["baseline"]] == sorted(p["time_s"] for p in row["curves"]["baseline"])
    base, same, timed = row["baseline"], row["equal_steps"], row["equal_time"]
    assert base["drop_rate"] == 0 and same["drop_rate"] == 0.5 and base["steps"] == same["steps"] == 6
    assert same["schedule"] == "constant"  # the recipe as shipped
    expected = max(1, round(6 * base["time_s"] / same["time_s"]))  # the one equal-time rule
    assert timed["steps"] == (expected if abs(expected - 6) > 0.3 else 6)
    assert row["holds"] == within_margins(row) and result["extras"]["contenders"][0]["holds"] == int(within_margins(row))
    assert result["schema"] == 1 and result["benchmark"] == "recipe-time"  # the one result shape of every study
    assert [v["holds"] for v in result["study"]["verdicts"]] == [row["holds"]]
    table = recipe_time_markdown(result)
    assert f"Holds the margins in {int(within_margins(row))} of 1 seeds" in table
    assert len(recipe_time_figure(result).axes) == 4  # perplexity against hours, its second half, two bar charts
    curve = row["curves"]["baseline"]  # the paper's measure: the time to DropBP off's final perplexity
    assert curve[-1]["val_loss"] == base["val_loss"] and curve[-1]["time_s"] > 0
    points = {run: [CurvePoint(0, p["time_s"], 0.0, p["val_loss"]) for p in row["curves"][run]]
              for run in ("baseline", "equal_time")}
    assert row["speedup_to_target"] == speedup_to(points["equal_time"], points["baseline"], base["val_loss"])
    assert f"{math.exp(base['val_loss']):.3f}" in table and "speed-up to target" in table


@pytest.mark.slow
def test_recipe_time_on_the_step_clock_with_another_technique_against_exact_backprop(tmp_path):
    settings = RecipeTimeSettings(device="cpu", overrides=FREEZE, seeds=(1,), out=tmp_path, time_model=False)
    result = run_recipe_time(settings, backends.get("cpu"), progress=False)
    (row,) = result["extras"]["contenders"][0]["seeds"]
    base, same, timed = row["baseline"], row["equal_steps"], row["equal_time"]
    assert base["technique"] == "dropbp" and base["drop_rate"] == 0  # the baseline freezes nothing
    assert same["technique"] == "freeze" and same["flops"] < base["flops"]
    assert result["study"]["step_time_model"] is None
    for run in (base, same, timed):
        assert run["time_s"] == run["measured_time_s"]
    expected = max(1, round(6 * base["time_s"] / same["time_s"]))
    assert timed["steps"] == (expected if abs(expected - 6) > 0.3 else 6)
    assert "summed over each run's steps" in recipe_time_markdown(result)


def test_recipe_time_settings_are_checked():
    with pytest.raises(ConfigError, match="--overrides must each look like key=value"):
        RecipeTimeSettings(overrides=("train.steps",)).validate()
    with pytest.raises(ConfigError, match="--seeds needs at least one seed"):
        RecipeTimeSettings(seeds=()).validate()


@pytest.mark.slow
def test_several_contenders_share_one_baseline_and_a_cached_study_resumes_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPBP_CACHE", str(tmp_path / "cache"))
    contenders = ("dropbp.drop_rate=0.5 dropbp.allocation=depth dropbp.allocator=optimal dropbp.schedule.kind=constant",
                  "dropbp.technique=freeze dropbp.drop_rate=0.5 dropbp.schedule.kind=constant")
    settings = RecipeTimeSettings(device="cpu", overrides=SMALL, seeds=(0,), out=tmp_path, contenders=contenders,
                                  cache_runs=True)
    result = run_recipe_time(settings, backends.get("cpu"), progress=False)
    assert [c["label"] for c in result["extras"]["contenders"]] == list(contenders)
    depth, freeze = (c["seeds"][0] for c in result["extras"]["contenders"])
    assert depth["baseline"] == freeze["baseline"]  # one baseline run for both
    model = StepTimeModel.from_dict(result["study"]["step_time_model"])
    for run in (depth["baseline"], depth["equal_steps"], depth["equal_time"]):  # times read through the clock
        assert run["time_s"] == model.seconds(run["steps"], run["flops"]) and run["measured_time_s"] > 0
    assert depth["equal_steps"]["technique"] == "dropbp" and freeze["equal_steps"]["technique"] == "freeze"
    labels = [p["label"] for p in model.points]  # exact backprop, uniform DropBP, freeze as itself; depth off the line
    assert labels == ["DropBP off", "DropBP p=0.25", "DropBP p=0.5", "DropBP p=0.75", contenders[1]]
    assert set(model.scales) == {contenders[1]}  # off the line, met exactly by its own factor
    frozen = model.points[-1]
    assert model.seconds(1, frozen["flops"], contenders[1]) == pytest.approx(frozen["seconds"])
    assert frozen["flops"] < model.points[0]["flops"]
    table = recipe_time_markdown(result)
    assert table.count("## ") == 2 and "dropbp.allocation=depth" in table
    assert len(recipe_time_figure(result).axes) == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a cached study trained again")

    monkeypatch.setattr("dropbp.benchmarks.recipe_runs.train_recipe", no_training)
    again = run_recipe_time(settings, backends.get("cpu"), progress=False)
    assert again["extras"]["contenders"] == result["extras"]["contenders"] and again["study"] == result["study"]


@pytest.mark.slow
def test_without_equal_steps_each_contender_trains_once_for_its_planned_count(tmp_path):
    warmup = "dropbp.drop_rate=0.5 dropbp.allocation=uniform dropbp.schedule.kind=constant dropbp.schedule.warmup_steps=2"
    settings = RecipeTimeSettings(device="cpu", overrides=SMALL, seeds=(0,), out=tmp_path, equal_steps=False,
                                  contenders=(warmup,), calibration_rounds=1, calibration_steps=2)
    result = run_recipe_time(settings, backends.get("cpu"), progress=False)
    (row,) = result["extras"]["contenders"][0]["seeds"]
    assert row["equal_steps"] is None  # not trained at the baseline's steps
    model = StepTimeModel.from_dict(result["study"]["step_time_model"])
    rates = {"DropBP off": 0.0, "DropBP p=0.25": 0.25, "DropBP p=0.5": 0.5, "DropBP p=0.75": 0.75}
    line = statistics.linear_regression([rates[p["label"]] for p in model.points], [p["flops"] for p in model.points])
    exact, half = line.intercept, line.intercept + 0.5 * line.slope  # FLOPs per step against the drop rate
    base_time = row["baseline"]["time_s"]

    def planned(n):  # two exact steps, then steps at rate 0.5
        return model.seconds(n, exact * min(n, 2) + half * max(0, n - 2))

    steps = row["equal_time"]["steps"]
    assert abs(planned(steps) - base_time) <= abs(planned(steps + 1) - base_time)
    assert steps == 1 or abs(planned(steps) - base_time) <= abs(planned(steps - 1) - base_time)
    assert row["equal_time"]["time_s"] == pytest.approx(base_time, rel=0.25)  # realised masks scatter about the plan
    table = recipe_time_markdown(result)
    assert "equal steps" not in table and re.search(r"\| 0 +\| baseline's time", table)
    assert len(recipe_time_figure(result).axes) == 4
