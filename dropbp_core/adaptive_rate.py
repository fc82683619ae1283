"""An adaptive drop rate: it moves to a higher rate only when the run measurably learns more per unit of compute
there, and back down when a lower rate does better.

DropBP gives each branch's weights only ``1 - p`` of the updates. That costs most while a run is still learning
fast and least near a plateau, where cheaper steps win; which of the two holds is measured, not assumed:

- Training is cut into windows of ``window`` optimizer steps; a window runs at one of ``levels`` rates, from 0 to
  the asked (maximum) rate. A window's *efficiency* is its loss decrease per step (the least-squares slope of the
  window's training losses, so nothing of the neighbouring windows leaks in) divided by the relative cost of its
  steps (``step_cost(factor)``: 1 for exact backprop, less when dropping; the driver passes its FLOPs model).
- Windows come in threes: the current level, a probe one level up or down (alternately, within range), the current
  level again. The probe is compared with the mean of the two windows around it (which cancels the run's own
  trend: every run learns less per step as it goes).
- A probe *down* (towards exact backprop) wins as soon as its efficiency is the higher. A probe *up* must win
  clearly: by ``margin`` (relative) and by ``confidence`` standard errors of the difference, each window's slope
  error taken from the scatter of its losses about their line. A 20-step loss slope is noisy, and without this gate
  noise alone climbs the rate where any dropping hurts. So dropping more is adopted only where it measurably pays,
  and dropping less on any sign that exact steps pay more.
- A refused probe up costs a window at a higher rate for nothing, so after one the controller waits: 1, 2, 4, then
  at most ``max_wait`` extra windows at its level before the next triple; an adopted probe resets the wait.
- The run starts at rate 0 (exact backprop); the first probe goes up.

Its inputs are the losses the driver passes to :meth:`AdaptiveRate.observe` (with several ranks: the mean over
ranks, so every rank decides alike) and the deterministic cost model; no clock, so a run is reproducible and a
resume (:meth:`state_dict`) is bit-exact. It plugs into :class:`~dropbp.core.DropBP` as its ``schedule``, scales
every per-branch rate alike (a sensitivity allocation keeps its shape), and targets at most ``levels`` rates, so the
pool sampler draws from at most ``pool_size * levels`` masks. Its cost is a few float operations per step.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .checks import check_int
from .errors import ConfigError
from .state import check_state


def default_step_cost(factor: float) -> float:
    """Relative cost of a step that drops ``factor`` of the branches' backward: a backward costs two forwards and
    the branches hold almost all of the compute (the driver's FLOPs model is better; this is the fallback)."""
    return 1.0 - factor * 2.0 / 3.0


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than two values)."""
    return slope_with_error(values)[0]


def slope_with_error(values: list[float]) -> tuple[float, float]:
    """Least-squares slope of ``values`` against their index, and its standard error from the residuals' scatter
    (0 for fewer than three values)."""
    n = len(values)
    if n < 2:
        return 0.0, 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    fitted = num / den
    if n < 3:
        return fitted, 0.0
    residual = sum((v - mean_y - fitted * (i - mean_x)) ** 2 for i, v in enumerate(values))
    return fitted, math.sqrt(residual / (n - 2) / den)


class AdaptiveRate:
    """The adaptive rate controller (see the module docstring): ``observe(step, loss)`` after each optimizer step,
    the engine asks :meth:`factor` before it."""

    kind = "adaptive"

    def __init__(self, *, window: int = 20, levels: int = 4, margin: float = 0.05, confidence: float = 2.0,
                 max_wait: int = 8, step_cost: Callable[[float], float] = default_step_cost) -> None:
        self.window = check_int("adaptive window", window, 2)
        self.levels = check_int("adaptive levels", levels, 2)
        self.max_wait = check_int("adaptive max_wait", max_wait, 0)
        if not 0 <= margin < 1:
            raise ConfigError(f"adaptive margin must be in [0, 1), got {margin!r}.")
        if not (isinstance(confidence, (int, float)) and math.isfinite(confidence) and confidence >= 0):
            raise ConfigError(f"adaptive confidence must be a number >= 0, got {confidence!r}.")
        self.margin, self.confidence, self.step_cost = float(margin), float(confidence), step_cost
        self.wait = 0                  # windows left at the current level before the next triple
        self.patience = 0              # the wait after the next refused probe up: 1, 2, 4, ... max_wait
        self.level = 0                 # the current level: level / (levels - 1) of the maximum rate
        self.phase = 0                 # 0: current level, 1: probe, 2: current level again
        self.direction = 1             # the next probe goes up (+1) or down (-1)
        self.efficiencies: list[float] = []  # this triple's windows
        self.errors: list[float] = []        # their standard errors
        self.history: list[dict[str, Any]] = []  # each finished triple: levels, efficiencies, decision
        self._losses: list[float] = []
        self._next_step = 0

    # -- the engine's side ---------------------------------------------------------------------------------------
    def level_in_force(self) -> int:
        """The level of the current window (the probe's during a probe window)."""
        return self.probe_level() if self.phase == 1 else self.level

    def probe_level(self) -> int:
        """The level the next probe tries: one up or down from the current, within range."""
        if self.level == 0:
            return 1
        if self.level == self.levels - 1:
            return self.level - 1
        return self.level + self.direction

    def factor(self, step: int, start: float) -> float:
        """What every per-branch rate is multiplied by at ``step`` (the level of the window in force)."""
        return self.level_in_force() / (self.levels - 1) if start > 0 else 0.0

    def distinct_rates(self, start: float) -> int:
        """At most ``levels`` rates occur (0 included)."""
        return self.levels

    # -- the driver's side ---------------------------------------------------------------------------------------
    def observe(self, step: int, loss: float) -> None:
        """Record the training loss of optimizer ``step`` (0-based, in order); each ``window`` steps, score the
        window, and after each triple of windows decide the level."""
        if step != self._next_step:
            raise ConfigError(f"adaptive rate: observed step {step}, expected {self._next_step} (steps in order).")
        self._next_step += 1
        self._losses.append(float(loss))
        if len(self._losses) < self.window:
            return
        if self.wait:
            self.wait, self._losses = self.wait - 1, []
            return
        factor = self.level_in_force() / (self.levels - 1)
        fitted, error = slope_with_error(self._losses)
        self.efficiencies.append(-fitted / self.step_cost(factor))
        self.errors.append(error / self.step_cost(factor))
        self._losses = []
        self.phase += 1
        if self.phase == 3:
            self._decide()

    def _decide(self) -> None:
        before, probe, after = self.efficiencies
        error_before, error_probe, error_after = self.errors
        around = (before + after) / 2
        probe_level = self.probe_level()
        noise = math.sqrt(error_probe ** 2 + (error_before ** 2 + error_after ** 2) / 4)
        if probe_level > self.level:  # dropping more: only on clear evidence
            moved = probe > 0 and probe - around > max(self.margin * abs(around), self.confidence * noise)
        else:  # dropping less: on any evidence
            moved = probe > around
        self.history.append({"level": self.level, "probe": probe_level, "efficiency": around,
                             "probe_efficiency": probe, "noise": noise, "moved": moved})
        if moved:
            self.level, self.patience = probe_level, 0
        else:
            self.direction = -self.direction if 0 < self.level < self.levels - 1 else self.direction
            if probe_level > self.level:
                self.wait, self.patience = self.patience, min(max(1, 2 * self.patience), self.max_wait)
        self.direction = 1 if self.level == 0 else -1 if self.level == self.levels - 1 else self.direction
        self.efficiencies, self.errors, self.phase = [], [], 0

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready: everything the next decisions depend on, so a resumed run decides exactly as the whole."""
        return {"window": self.window, "levels": self.levels, "level": self.level, "phase": self.phase,
                "direction": self.direction, "efficiencies": list(self.efficiencies), "errors": list(self.errors),
                "wait": self.wait, "patience": self.patience,
                "history": [dict(entry) for entry in self.history], "losses": list(self._losses),
                "next_step": self._next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (refused for another window or level count)."""
        check_state("AdaptiveRate", state, ("window", "levels", "level", "phase", "direction", "efficiencies",
                                            "history", "losses", "next_step"))
        if (state["window"], state["levels"]) != (self.window, self.levels):
            raise ConfigError(f"AdaptiveRate state was saved with window {state['window']} and {state['levels']} "
                              f"levels, this one has {self.window} and {self.levels}.")
        self.level, self.phase, self.direction = int(state["level"]), int(state["phase"]), int(state["direction"])
        self.efficiencies = [float(e) for e in state["efficiencies"]]
        # saved before the confidence gate existed: no errors (the margin alone decided), no wait
        self.errors = [float(e) for e in state.get("errors", [0.0] * len(self.efficiencies))]
        self.wait, self.patience = int(state.get("wait", 0)), int(state.get("patience", 0))
        self.history = [dict(entry) for entry in state["history"]]
        self._losses = [float(v) for v in state["losses"]]
        self._next_step = int(state["next_step"])

    def describe(self) -> str:
        """One line for logs and reports."""
        return f"adaptive (window {self.window}, {self.levels} levels, confidence {self.confidence:g})"
