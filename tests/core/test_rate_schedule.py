"""Drop-rate schedules: each kind's rate equals its formula, warm-up and quantisation, the engine's masks under a
schedule stay a pure function of (seed, step), and the per-step FLOPs budget is the scheduled rate."""
from __future__ import annotations

import math

import pytest
import torch

from dropbp.core import DropBP
from dropbp.core.allocation import drop_fraction
from dropbp.core.errors import ConfigError
from dropbp.core.rate_schedule import RateSchedule

from ..conftest import tiny_model

START, END, TOTAL, WARMUP = 0.75, 0.25, 40, 8


def expected(kind: str, step: int, stages: int = 4) -> float:
    if step < WARMUP:
        return 0.0
    u = min(1.0, (step - WARMUP) / (TOTAL - WARMUP))
    if kind == "linear":
        return START + (END - START) * u
    if kind == "cosine":
        return END + (START - END) * 0.5 * (1 + math.cos(math.pi * u))
    if kind == "steps":
        return START + (END - START) * min(stages - 1, math.floor(u * stages)) / (stages - 1)
    return START


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "steps"])
def test_the_rate_at_each_step_is_the_formula(kind):
    schedule = RateSchedule(kind, total_steps=TOTAL, end=END, warmup_steps=WARMUP)
    for step in (0, WARMUP - 1, WARMUP, 13, 20, 31, TOTAL - 1, TOTAL, 2 * TOTAL):
        assert schedule.rate_at(step, START) == pytest.approx(expected(kind, step)), step
        assert schedule.factor(step, START) == pytest.approx(expected(kind, step) / START)


def test_the_decay_reaches_the_end_rate_and_only_lowers_the_rate():
    assert RateSchedule("linear", total_steps=10, end=0.0).rate_at(10, 0.5) == 0.0
    assert RateSchedule("cosine", total_steps=10, end=0.0).rate_at(0, 0.5) == 0.5
    assert RateSchedule("linear", total_steps=10, end=0.9).rate_at(5, 0.5) == 0.5  # an end above start is capped


def test_levels_quantise_to_that_many_rates_between_start_and_end():
    schedule = RateSchedule("cosine", total_steps=TOTAL, end=END, levels=3)
    rates = {round(schedule.rate_at(step, START), 12) for step in range(TOTAL + 1)}
    assert rates == {0.75, 0.5, 0.25} and schedule.distinct_rates(START) == 3
    assert RateSchedule("linear", total_steps=TOTAL).distinct_rates(START) is None


@pytest.mark.parametrize("sampler", ["bernoulli", "pool"])
def test_masks_are_a_function_of_seed_and_step_in_any_order(sampler):
    schedule = RateSchedule("linear", total_steps=30, end=0.0, warmup_steps=3, levels=4)
    masks = {}
    for order in (range(30), reversed(range(30)), [17, 3, 29, 0, 17]):
        dropbp = DropBP(tiny_model("llama", layers=4), 0.75, sampler=sampler, pool_size=4, seed=5, schedule=schedule)
        for step in order:
            mask = dropbp.begin_step(step)
            assert masks.setdefault(step, mask) == mask, step
    assert all(not any(masks[step]) for step in range(3))  # warm-up: exact backprop
    assert not any(masks[29])  # the last level is rate 0


def test_each_step_drops_the_scheduled_share_of_flops_with_the_pool_sampler():
    """The pool is exact over every K steps: the realised FLOPs fraction of each K-step window equals the rate
    scheduled there (the rate is constant inside the window here)."""
    k = 4
    schedule = RateSchedule("steps", total_steps=4 * k, end=0.25, stages=4)
    dropbp = DropBP(tiny_model("llama", layers=4), 0.75, sampler="pool", pool_size=k, seed=2, schedule=schedule)
    for window in range(4):
        dropbp.reset_counters()
        for step in range(window * k, (window + 1) * k):
            dropbp.begin_step(step)
        asked = schedule.rate_at(window * k, 0.75)
        assert dropbp.realized_drop_fraction() == pytest.approx(asked, abs=1 / (2 * k)), window
        assert dropbp.report()["scheduled_drop_fraction"] == pytest.approx(asked)


def test_a_sensitivity_allocation_keeps_its_shape_under_the_schedule():
    schedule = RateSchedule("linear", total_steps=10, end=0.0)
    dropbp = DropBP(tiny_model("llama", layers=4), 0.5, schedule=schedule)
    dropbp.set_rates([0.2, 0.8] * 4)
    start = drop_fraction(dropbp.flops, dropbp.rates)
    sampler = dropbp.sampler_at(5)
    assert sampler.rates == pytest.approx([r * schedule.factor(5, start) for r in dropbp.rates])
    assert drop_fraction(dropbp.flops, sampler.rates) == pytest.approx(schedule.rate_at(5, start))


def test_bad_schedules_are_refused_before_the_model_is_touched():
    with pytest.raises(ConfigError, match="schedule kind must be one of constant, linear, cosine, steps"):
        RateSchedule("exponential")
    with pytest.raises(ConfigError, match="schedule end rate must be a number in"):
        RateSchedule("linear", end=1.5)
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="pool sampler needs a schedule with a bounded number of rates"):
        DropBP(model, 0.5, sampler="pool", schedule=RateSchedule("cosine", total_steps=10))
    assert DropBP.of(model) is None


def test_the_schedule_state_resumes_exactly():
    schedule = RateSchedule("cosine", total_steps=20, end=0.0, warmup_steps=2)
    whole = DropBP(tiny_model("llama", layers=4), 0.75, seed=1, schedule=schedule)
    for step in range(20):
        whole.begin_step(step)
    first = DropBP(tiny_model("llama", layers=4), 0.75, seed=1, schedule=schedule)
    for step in range(10):
        first.begin_step(step)
    second = DropBP(tiny_model("llama", layers=4), 0.75, seed=1, schedule=schedule)
    second.load_state_dict(first.state_dict())
    for step in range(10, 20):
        second.begin_step(step)
    assert second.report() == whole.report() and second.report()["scheduled_drop_fraction"] < 0.75 / 2
    assert torch.isfinite(torch.tensor(whole.report()["scheduled_drop_fraction"]))
