"""The adaptive rate: it adopts a probe level only when the probe learns more per unit of cost than the windows
around it, alternates its probes, is deterministic in its inputs, and resumes bit for bit."""
from __future__ import annotations

import pytest

from dropbp.core import DropBP
from dropbp.core.adaptive_rate import AdaptiveRate, slope
from dropbp.core.errors import ConfigError

from ..conftest import tiny_model

W = 4


def feed(controller: AdaptiveRate, slopes: list[float], start: int = 0, loss: float = 10.0) -> float:
    """One window per slope: losses falling by ``slope`` per step; returns the last loss."""
    step = start
    for per_step in slopes:
        for _ in range(W):
            controller.observe(step, loss)
            loss -= per_step
            step += 1
    return loss


def test_slope_is_the_least_squares_slope():
    assert slope([3.0, 2.0, 1.0, 0.0]) == pytest.approx(-1.0)
    assert slope([1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)
    assert slope([5.0]) == 0.0


def test_a_probe_that_learns_more_per_cost_is_adopted_and_one_that_does_not_is_not():
    controller = AdaptiveRate(window=W, levels=4, step_cost=lambda f: 1.0 - 0.6 * f)  # 1, 0.8, 0.6, 0.4
    assert controller.factor(0, 0.75) == 0.0 and controller.probe_level() == 1
    feed(controller, [0.10, 0.09, 0.10])  # probe (level 1) learns 0.09 per step at cost 0.8: 0.1125 > 0.1
    assert controller.level == 1 and controller.history[-1]["moved"]
    assert controller.factor(12, 0.75) == pytest.approx(1 / 3)
    feed(controller, [0.10, 0.05, 0.10], start=12)  # level 2 at cost 0.6: 0.083 per cost against 0.125: refused
    assert controller.level == 1 and not controller.history[-1]["moved"]
    assert controller.probe_level() == 0  # the next probe goes the other way
    feed(controller, [0.10, 0.10, 0.10], start=24)  # exact backprop, same progress at full cost: refused again
    assert controller.level == 1 and controller.probe_level() == 2


def test_the_probe_window_runs_at_the_probe_level():
    controller = AdaptiveRate(window=W, levels=3)
    seen = []
    for step in range(3 * W):
        seen.append(controller.factor(step, 0.5))
        controller.observe(step, 10.0 - step)
    assert seen == [0.0] * W + [0.5] * W + [0.0] * W  # level 0, probe 1 (of 0..2), level 0


def probing(controller: AdaptiveRate) -> bool:
    """Whether the next window is a probe."""
    return controller.phase == 1 and not controller.wait


def feed_windows(controller: AdaptiveRate, windows: int, per_step, noise: float = 0.0, seed: int = 0) -> None:
    """``windows`` windows, each with losses falling by ``per_step(probe)`` per step (probe: whether it is a probe
    window), plus uniform noise of half-width ``noise``."""
    import random

    draw, loss, step = random.Random(seed), 10.0, controller._next_step
    for _ in range(windows):
        fall = per_step(probing(controller))
        for _ in range(controller.window):
            controller.observe(step, loss + draw.uniform(-noise, noise))
            loss -= fall
            step += 1


def test_a_rising_loss_never_raises_the_rate():
    controller = AdaptiveRate(window=W, levels=4)
    feed_windows(controller, 40, lambda probe: -0.2 if probe else 0.1)
    assert controller.level == 0 and not any(entry["moved"] for entry in controller.history)


def test_noise_alone_does_not_raise_the_rate_and_refused_probes_come_ever_rarer():
    """Windows at any rate learn alike, under loss noise far larger than the window's fall: a controller without
    the confidence gate climbs on the noise, the gated one stays at exact backprop, probing less and less often."""
    gated, ungated = AdaptiveRate(window=20, levels=4), AdaptiveRate(window=20, levels=4, confidence=0.0)
    for controller in (gated, ungated):
        feed_windows(controller, 120, lambda probe: 0.01, noise=0.5, seed=3)
    assert any(entry["moved"] for entry in ungated.history)
    assert gated.level == 0 and not any(entry["moved"] for entry in gated.history)
    assert len(gated.history) < len(ungated.history) / 2  # it waited between its refused probes
    assert gated.patience == gated.max_wait


def test_decisions_are_deterministic_and_resume_exactly():
    slopes = [0.2, 0.25, 0.1, 0.05, 0.08, 0.02, 0.01, 0.03, 0.005, 0.01, 0.02, 0.0]
    whole = AdaptiveRate(window=W, levels=4)
    feed(whole, slopes)
    first = AdaptiveRate(window=W, levels=4)
    loss = feed(first, slopes[:5])
    second = AdaptiveRate(window=W, levels=4)
    second.load_state_dict(first.state_dict())
    feed(second, slopes[5:], start=5 * W, loss=loss)
    assert second.state_dict() == whole.state_dict()
    with pytest.raises(ConfigError, match="observed step 3, expected 48"):
        whole.observe(3, 1.0)
    with pytest.raises(ConfigError, match="saved with window 4"):
        AdaptiveRate(window=5).load_state_dict(whole.state_dict())


def test_the_engine_follows_the_controller_and_bounds_the_pool():
    controller = AdaptiveRate(window=W, levels=4)
    dropbp = DropBP(tiny_model("llama", layers=4), 0.75, sampler="pool", pool_size=4, schedule=controller)
    for step in range(W):
        assert not any(dropbp.begin_step(step))  # level 0: exact backprop
        controller.observe(step, 10.0 - step)
    masks = {dropbp.begin_step(step) for step in range(W, 2 * W)}  # the probe: level 1 of 3, a quarter dropped
    assert dropbp.scheduled_drop_fraction(W) == pytest.approx(0.25) and any(any(m) for m in masks)
    assert controller.distinct_rates(0.75) == 4
