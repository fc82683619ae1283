"""The step-time model: its fit, its bounds and the interleaved timing it is fitted to."""
from __future__ import annotations


import pytest
from hypothesis import given, strategies as st

from dropbp.benchmarks.harness import CurvePoint
from dropbp.benchmarks.recipe_time import RecipeTimeSettings
from dropbp.benchmarks.step_time_model import CALIBRATION_RATES, StepTimeModel, fit_step_time
from dropbp.benchmarks.study import Contender, StudyRun, calibrate, equal_time_steps, run_study
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


@pytest.mark.parametrize("field", ["calibration_rounds", "calibration_steps"])
def test_calibration_settings_must_be_positive(field):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be an integer >= 1, got 0"):
        RecipeTimeSettings(**{field: 0}).validate()
