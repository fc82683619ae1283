"""The step-time model: its fit, its bounds and the interleaved timing it is fitted to."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, strategies as st

from dropbp.benchmarks.step_time_model import StepTimeModel, fit_step_time, time_interleaved


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


def test_interleaved_timing_takes_medians_and_interleaves_rounds():
    ticks = itertools.count()
    calls = []

    def clock():
        return float(next(ticks))

    def stepper(label, cost):
        def run(step):
            calls.append((label, step))
            for _ in range(cost - 1):  # each tick of the clock is one unit of time
                next(ticks)
            return cost * 10.0
        return run

    measured = time_interleaved({"a": stepper("a", 1), "b": stepper("b", 3)}, clock, rounds=2, steps=2, warmup=1)
    assert [(m["label"], m["seconds"], m["flops"], m["timed_steps"]) for m in measured] == [
        ("a", 1.0, 10.0, 4), ("b", 3.0, 30.0, 4)]
    timed = [label for label, _ in calls[2:]]  # after one warm-up step each: rounds alternate a, a, b, b
    assert timed == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert [step for label, step in calls if label == "a"] == list(range(5))  # steps continue across rounds
