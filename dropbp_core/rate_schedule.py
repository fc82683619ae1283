"""Drop-rate schedules over training: the average drop rate each step targets, as a pure function of the step.

A schedule starts from the rate asked of the engine (``start``, the FLOPs-weighted average of its per-branch rates)
and, at optimizer step ``t`` of ``total_steps``, targets:

- ``warmup_steps``: rate 0 (exact backprop) for the first steps, whatever the kind; then, with progress
  ``u = (t - warmup_steps) / (total_steps - warmup_steps)`` (clamped to [0, 1]):
- ``constant``: ``start`` (the behaviour without a schedule);
- ``linear``: ``start + (end - start) * u``;
- ``cosine``: ``end + (start - end) * (1 + cos(pi * u)) / 2``;
- ``steps``: ``stages`` plateaus from ``start`` down to ``end``: plateau ``k = min(stages - 1, floor(u * stages))``
  has ``start + (end - start) * k / (stages - 1)``.

The engine scales every per-branch rate by ``rate_at(t) / start``, so a sensitivity allocation keeps its shape and
the FLOPs budget of each step is the scheduled rate exactly. ``levels`` quantises the rate to that many values
between ``start`` and ``end`` (both included): with the pool sampler each level is a pool of ``K`` masks, so a run
compiles at most ``K * levels + 1`` distinct graphs (the ``+ 1``: the all-kept mask of the warm-up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .allocation import validate_drop_rate
from .checks import check_int
from .errors import ConfigError

RATE_SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine", "steps")


class RateController(Protocol):
    """What the engine asks of a schedule: :class:`RateSchedule`, or your own (a function of the step)."""

    kind: str

    def factor(self, step: int, start: float) -> float:
        """What every per-branch rate is multiplied by at ``step`` for an asked rate ``start``."""
        ...

    def distinct_rates(self, start: float) -> int | None:
        """How many different rates can occur (None: unbounded)."""
        ...

    def describe(self) -> str:
        """One line for logs and reports."""
        ...


@dataclass(frozen=True)
class RateSchedule:
    """How the drop rate moves over ``total_steps`` optimizer steps (see the module docstring for the formulas)."""

    kind: str = "constant"
    total_steps: int = 1
    end: float = 0.0
    warmup_steps: int = 0
    stages: int = 4
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in RATE_SCHEDULES:
            raise ConfigError(f"schedule kind must be one of {', '.join(RATE_SCHEDULES)}, got {self.kind!r}.")
        check_int("schedule total_steps", self.total_steps, 1)
        validate_drop_rate(self.end, "schedule end rate")
        check_int("schedule warmup_steps", self.warmup_steps, 0)
        check_int("schedule stages", self.stages, 2)
        if self.levels is not None:
            check_int("schedule levels", self.levels, 2)

    def progress(self, step: int) -> float:
        """``u`` in [0, 1]: how far the decay has gone at ``step`` (0 during the warm-up)."""
        span = max(1, self.total_steps - self.warmup_steps)
        return min(1.0, max(0.0, (step - self.warmup_steps) / span))

    def rate_at(self, step: int, start: float) -> float:
        """The average drop rate targeted at optimizer ``step`` for a run that asks ``start``."""
        if step < self.warmup_steps:
            return 0.0
        end = min(self.end, start)  # a schedule only lowers the rate
        u = self.progress(step)
        if self.kind == "linear":
            rate = start + (end - start) * u
        elif self.kind == "cosine":
            rate = end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * u))
        elif self.kind == "steps":
            stage = min(self.stages - 1, math.floor(u * self.stages))
            rate = start + (end - start) * stage / (self.stages - 1)
        else:
            rate = start
        return self._quantised(rate, start, end)

    def _quantised(self, rate: float, start: float, end: float) -> float:
        if self.levels is None or start <= end:
            return rate
        level = round((rate - end) / (start - end) * (self.levels - 1))
        return end + (start - end) * level / (self.levels - 1)

    def factor(self, step: int, start: float) -> float:
        """What the engine multiplies every per-branch rate by at ``step`` (1 without a decay, 0 in warm-up)."""
        if start <= 0:
            return 0.0
        return self.rate_at(step, start) / start

    def distinct_rates(self, start: float) -> int | None:
        """How many different rates the schedule can target over a run (None: unbounded, without ``levels``); with
        the pool sampler of ``K`` masks, at most ``K`` times this many masks occur."""
        if self.kind == "constant":
            return 1 + (self.warmup_steps > 0)
        if self.kind == "steps":
            return self.stages + (self.warmup_steps > 0)
        return None if self.levels is None else self.levels + (self.warmup_steps > 0)

    def describe(self) -> str:
        """One line for logs and reports."""
        warmup = f", {self.warmup_steps} warm-up steps at 0" if self.warmup_steps else ""
        if self.kind == "constant":
            return f"constant{warmup}"
        levels = f", {self.levels} levels" if self.levels else ""
        stages = f", {self.stages} stages" if self.kind == "steps" else ""
        return f"{self.kind} to {self.end:g} over {self.total_steps} steps{stages}{levels}{warmup}"
