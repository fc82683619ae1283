"""The drop-rate schedule a recipe asks for (``dropbp.schedule.*``), as the engine takes it."""
from __future__ import annotations

from collections.abc import Callable

from dropbp.core.adaptive_rate import AdaptiveRate
from dropbp.core.rate_schedule import RateController, RateSchedule
from dropbp.core.step_flops import StepFlops
from dropbp.recipes.config.dropbp_section import DropScheduleSection


def step_costs(flops: StepFlops, drop_rate: float) -> Callable[[float], float]:
    """The relative cost of a step (1: exact backprop) when every branch drops ``drop_rate`` times a factor, by the
    FLOPs model: what the adaptive rate weighs each window's progress against."""
    def cost(factor: float) -> float:
        return 1.0 - flops.saved_fraction(no_backward=[drop_rate * factor] * len(flops.names))

    return cost


def rate_schedule(section: DropScheduleSection, total_steps: int, sampler: str,
                  flops: Callable[[], Callable[[float], float]]) -> RateController | None:
    """The engine's drop-rate schedule of a recipe (None when constant): the adaptive rate (``flops()``: its step
    cost, made only for it), or a fixed schedule (linear and cosine quantised to 4 rates with the pool sampler unless
    ``levels`` says otherwise, so the masks stay bounded)."""
    if section.kind == "adaptive":
        return AdaptiveRate(window=section.window, levels=section.levels or 4, confidence=section.confidence,
                            step_cost=flops())
    if section.is_constant:
        return None
    levels = section.levels
    if levels is None and sampler == "pool" and section.kind in ("linear", "cosine"):
        levels = 4
    return RateSchedule(section.kind, total_steps=total_steps, end=section.end_rate,
                        warmup_steps=section.warmup_steps, stages=section.stages, levels=levels)
