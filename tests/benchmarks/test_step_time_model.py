"""The step-time model: its fit, its bounds and the interleaved timing it is fitted to."""
from __future__ import annotations


import pytest
from hypothesis import given, strategies as st

from dropbp.benchmarks.harness import CurvePoint
from dropbp.benchmarks.recipe_time import RecipeTimeSettings
from dropbp.benchmarks.step_time_model import CALIBRATION_RATES, StepTimeModel, fit_step_time
from dropbp.benchmarks.study import (Contender, StudyRun, calibrate, equal_time_steps, planned_equal_time_steps,
                                    run_study)
from dropbp.benchmarks.study.runner import CALIBRATION
from dropbp.core.errors import ConfigError


def points(pairs):
    return [{"label": f"c{i}", "flops": f, "seconds": s} for i, (f, s) in enumerate(pairs)]


@given(st.floats(0, 1), st.floats(1e-12, 1e-9), st.lists(st.floats(1e6, 1e9), min_size=2, max_size=6, unique=True))
def test_a_line_is_recovered_exactly(intercept, slope, flops):
    model = fit_step_time(points([(f, intercept + slope * f) for f in flops]))
    assert model.per_step_s == pytest.approx(intercept, abs=1e-9)
    assert model.per_flop_s == pytest.approx(slope, rel=1e-6)
    assert model.worst_error() < 1e-6


def test_the_fit_gives_every_measured_step_a_positive_time():
    backward_dear = fit_step_time(points([(2.0, 0.2), (3.0, 1.0)]))  # meets 0 s at 1.75 FLOPs: kept as it is
    assert backward_dear.per_step_s < 0 and backward_dear.seconds(1, 2.0) == pytest.approx(0.2)
    too_steep = fit_step_time(points([(1.0, 0.01), (2.0, 0.01), (3.0, 3.0)]))  # the line is below 0 at 1 FLOP
    assert too_steep.per_step_s == 0 and too_steep.per_flop_s > 0
    falling = fit_step_time(points([(1.0, 1.0), (2.0, 0.5)]))  # time falls with FLOPs: proportional instead
    assert falling.per_step_s == 0 and falling.per_flop_s > 0
    single = fit_step_time(points([(4.0, 2.0)]))  # one configuration: proportional to FLOPs
    assert single.seconds(3, 12.0) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        fit_step_time([])


def test_a_technique_off_the_line_gets_its_own_factor():
    measured = points([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]) + [
        {"label": "skips blocks", "flops": 2.0, "seconds": 1.5, "own_scale": True}]
    model = fit_step_time(measured)
    assert model.per_step_s == pytest.approx(0.0, abs=1e-12) and model.per_flop_s == pytest.approx(1.0)
    assert model.scales == {"skips blocks": pytest.approx(0.75)}
    assert model.seconds(10, 20.0, "skips blocks") == pytest.approx(15.0)  # its measured time per step, exactly
    assert model.seconds(10, 20.0, "c1") == pytest.approx(20.0) and "skips blocks" not in model.errors()
    assert StepTimeModel.from_dict(model.to_dict()) == model
    steep = points([(2.0, 0.2), (3.0, 1.0)]) + [{"label": "low", "flops": 1.0, "seconds": 0.1, "own_scale": True}]
    assert fit_step_time(steep).per_step_s == 0  # the line would be negative where "low" sits: proportional


def test_errors_and_round_trip():
    model = fit_step_time(points([(1.0, 1.0), (2.0, 2.2), (3.0, 2.9)]))
    errors = model.errors()
    assert set(errors) == {"c0", "c1", "c2"} and model.worst_error() == max(abs(e) for e in errors.values()) > 0
    again = StepTimeModel.from_dict(model.to_dict())
    assert again == model and again.seconds(10, 5.0) == model.seconds(10, 5.0)


def test_the_study_clock_interleaves_rounds_and_takes_the_median_of_round_means():
    calls = []

    def timer(label, seconds_per_round):
        rounds = iter(seconds_per_round)

        def time_steps(count):
            calls.append((label, count))
            mean = next(rounds)
            return [(mean - 0.5, 10.0), (mean + 0.5, 30.0)][:count]
        return time_steps

    model = calibrate({"a": timer("a", [1.0, 9.0, 2.0]), "b": timer("b", [3.0, 4.0, 5.0]),
                       "own": timer("own", [2.0, 2.0, 2.0])}, {"own"}, rounds=3, steps=2)
    assert calls == [("a", 2), ("b", 2), ("own", 2)] * 3  # every configuration once per round, in turn
    points = {p["label"]: p for p in model.points}
    assert points["a"]["seconds"] == 2.0 and points["b"]["seconds"] == 4.0  # the busy round (9 s) does not count
    assert points["a"]["flops"] == 20.0 and points["a"]["timed_steps"] == 6
    assert set(model.scales) == {"own"}  # timed as itself: its own factor on the line


def test_the_one_equal_time_rule():
    assert equal_time_steps(100, base_time=60.0, own_time=40.0) == 150
    assert equal_time_steps(100, base_time=60.0, own_time=40.0, max_factor=1.2) == 120
    assert equal_time_steps(100, base_time=40.0, own_time=60.0) == 67  # a slower contender trains fewer steps
    assert equal_time_steps(3, base_time=1.0, own_time=100.0) == 1


class CountingWorkload:
    """A study workload whose runs cost FLOPs in proportion to their steps (DropBP at rate r: 1 - r/2 per step),
    and whose timer records every call."""

    def __init__(self):
        self.timed = []

    def train(self, contender, lr, seed, steps, *, progress):
        flops = steps * (1.0 - contender.rate / 2)
        end = CurvePoint(step=steps, time_s=float(steps), flops=flops, val_loss=1.0 / steps)
        return StudyRun(contender.label, steps, float(steps), flops, [end], contender.rate, kind=contender.kind,
                        rate=contender.rate, lr=lr, seed=seed)

    def timer(self, contender):
        def time_steps(count):
            self.timed.append((contender.label, count))
            return [(1.0 - contender.rate / 2, 1.0 - contender.rate / 2)] * count
        return time_steps


def test_a_study_calibrates_in_the_rounds_and_steps_it_is_given_and_keys_its_cached_clock_by_them(tmp_path):
    contenders = [Contender("DropBP off"), Contender("half", "dropbp", "dropbp", 0.5)]
    workload = CountingWorkload()
    study = run_study(workload, contenders, steps=10, cache=tmp_path, calibration=(2, 3), progress=False)
    clocked = 1 + len(CALIBRATION_RATES)
    assert len(workload.timed) == 2 * clocked and {count for _, count in workload.timed} == {3}
    assert all(p["timed_steps"] == 6 for p in study.time_model.points)
    assert next(r for r in study.equal_time_runs if r.label == "half").steps == 13  # 10 x 1 / 0.75
    run_study(workload, contenders, steps=10, cache=tmp_path, calibration=(2, 3), progress=False)
    assert len(workload.timed) == 2 * clocked  # the kept clock and runs are read back
    run_study(workload, contenders, steps=10, cache=tmp_path, progress=False)
    assert len(workload.timed) == 2 * clocked + CALIBRATION[0] * clocked  # another calibration is timed anew


class PlanningWorkload(CountingWorkload):
    """The counting workload that also plans its drop rates: exact backprop for the first ``warmup`` steps of every
    DropBP run, then the contender's rate."""

    def __init__(self, warmup=0):
        super().__init__()
        self.warmup, self.trained = warmup, []

    def train(self, contender, lr, seed, steps, *, progress):
        self.trained.append((contender.label, steps))
        return super().train(contender, lr, seed, steps, progress=progress)

    def planned_rates(self, contender, steps):
        return [0.0 if step < self.warmup else contender.rate for step in range(steps)]


def brute_force_steps(seconds, base_time, cap=1000):
    """The count whose time is nearest ``base_time`` (the smaller on a tie), searched over every count."""
    return min(range(1, cap), key=lambda n: (abs(seconds(n) - base_time), n))


@pytest.mark.parametrize("warmup", [0, 4, 40])
def test_planned_steps_at_the_baselines_time_are_the_count_nearest_its_time(warmup):
    workload = PlanningWorkload(warmup)
    clocked = [Contender("DropBP off"), *(Contender(f"DropBP p={r:g}", "dropbp", "dropbp", r) for r in (0.25, 0.5))]
    model = fit_step_time([{"label": c.label, "flops": 10.0 * (1 - c.rate * 0.8), "seconds": 1.0 + 10.0 * (1 - c.rate * 0.8)}
                           for c in clocked])
    half = Contender("half", "dropbp", "dropbp", 0.5)
    base_time = model.seconds(100, 1000.0)

    def seconds(n):  # warm-up steps cost exact backprop's 10 FLOPs, the others the line's 6
        return model.seconds(n, 10.0 * min(n, warmup) + 6.0 * max(0, n - warmup))

    count = planned_equal_time_steps(workload, half, model, clocked, base_time, 100)
    assert count == brute_force_steps(seconds, base_time) and count > 100
    assert planned_equal_time_steps(workload, half, model, clocked, base_time, 100, max_factor=1.1) == min(count, 110)


def test_planned_steps_of_a_technique_off_the_line_come_from_its_own_calibration_point():
    clocked = [Contender("DropBP off"), Contender("DropBP p=0.5", "dropbp", "dropbp", 0.5), Contender("freeze", "freeze", "freeze")]
    model = fit_step_time([{"label": "DropBP off", "flops": 10.0, "seconds": 2.0},
                           {"label": "DropBP p=0.5", "flops": 6.0, "seconds": 1.5},
                           {"label": "freeze", "flops": 7.0, "seconds": 1.3, "own_scale": True}])
    count = planned_equal_time_steps(PlanningWorkload(), clocked[2], model, clocked, base_time=200.0, steps=100)
    assert count == round(200.0 / 1.3) == 154


def test_a_study_without_equal_steps_trains_each_contender_once_at_its_planned_count(tmp_path):
    contenders = [Contender("DropBP off"), Contender("half", "dropbp", "dropbp", 0.5)]
    workload = PlanningWorkload(warmup=2)
    study = run_study(workload, contenders, steps=10, seeds=(0, 1), equal_steps=False, calibration=(1, 2),
                      progress=False)
    assert workload.trained == [("DropBP off", 10), ("DropBP off", 10), ("half", 13), ("half", 13)]
    assert [r.label for r in study.runs] == ["DropBP off", "DropBP off"]  # no contender at the baseline's steps
    assert [r.steps for r in study.at_equal_time("half")] == [13, 13]  # 2 steps at 1 s, 11 at 0.75 s: 10.25 s
    swept = PlanningWorkload(warmup=2)
    study = run_study(swept, contenders, steps=10, seeds=(0, 1), lrs=(0.1, 0.2), equal_steps=False,
                      calibration=(1, 2), progress=False)
    assert swept.trained == [("DropBP off", 10), ("DropBP off", 10), ("DropBP off", 10),  # off's sweep, then seed 1
                             ("half", 13), ("half", 13), ("half", 13)]  # half's sweep at its planned count, seed 1
    assert [r.steps for r in study.sweep["half"]] == [13, 13] and study.chosen_lr["half"] in (0.1, 0.2)
    with pytest.raises(ValueError, match="plans its drop rates"):
        run_study(CountingWorkload(), contenders, steps=10, equal_steps=False, progress=False)
    with pytest.raises(ValueError, match="step-time model"):
        run_study(workload, contenders, steps=10, equal_steps=False, time_model=False, progress=False)
    with pytest.raises(ConfigError, match="--equal-steps false plans each contender's steps"):
        RecipeTimeSettings(equal_steps=False, time_model=False).validate()


@pytest.mark.parametrize("field", ["calibration_rounds", "calibration_steps"])
def test_calibration_settings_must_be_positive(field):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be an integer >= 1, got 0"):
        RecipeTimeSettings(**{field: 0}).validate()
