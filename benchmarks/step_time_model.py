"""A step-time model for time-to-accuracy studies: seconds per optimizer step as ``a + b * FLOPs``, fitted to
step times measured in interleaved rounds, so that "equal wall time" does not depend on how busy the machine was
while each run trained.

A study's runs train one after another, over an hour or more; whatever else the machine does meanwhile lands on
some runs and not on others (one study measured 17% of time saved at 3% of FLOPs saved). The model is measured
once per study, every configuration timed in the same rounds, so load falls on all of them alike; each run's time
is then its steps and FLOPs through the model: deterministic, and the same on a rerun. The fit's error at every
measured configuration is part of the result.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

#: Uniform DropBP rates a study times beside exact backprop: every DropBP run, whatever its rate policy, is read
#: between (or beyond) them by its FLOPs.
CALIBRATION_RATES = (0.25, 0.5, 0.75)

@dataclass(frozen=True)
class StepTimeModel:
    """``seconds(steps, flops) = per_step_s * steps + per_flop_s * flops``, with the measurements it was fitted to
    (``points``: label, median FLOPs and median seconds per step). A configuration measured with ``own_scale``
    (a technique whose time per FLOP differs from the line's, such as one that skips whole blocks) is left out of
    the line and gets its own factor on it (``scales``), so that its measured step time is met exactly."""

    per_step_s: float
    per_flop_s: float
    points: tuple[dict[str, Any], ...] = ()
    scales: dict[str, float] = field(default_factory=dict)

    def seconds(self, steps: float, flops: float, label: str | None = None) -> float:
        """Modelled training time of ``steps`` optimizer steps that cost ``flops`` in all (of the configuration
        ``label``, where it has its own factor)."""
        return (self.per_step_s * steps + self.per_flop_s * flops) * self.scales.get(label, 1.0)

    def formula(self) -> str:
        """The line, for reports: ``seconds per step = a + b x GFLOPs of the step``."""
        return f"seconds per step = {self.per_step_s:+.4f} + {self.per_flop_s * 1e9:.4f} x GFLOPs of the step"

    def errors(self) -> dict[str, float]:
        """Per configuration on the line: the line's relative error against its median step time."""
        return {p["label"]: self.seconds(1, p["flops"]) / p["seconds"] - 1 for p in self.points
                if p["label"] not in self.scales}

    def worst_error(self) -> float:
        """The largest relative error of the line over the configurations fitted to it (0 without any)."""
        return max((abs(e) for e in self.errors().values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the fit's errors included."""
        return {"per_step_s": self.per_step_s, "per_flop_s": self.per_flop_s, "points": list(self.points),
                "scales": dict(self.scales), "errors": self.errors(), "worst_error": self.worst_error()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepTimeModel":
        """The model fitted again to the measurements :meth:`to_dict` kept (so a kept calibration is read by
        today's fit)."""
        return fit_step_time([dict(p) for p in data["points"]])


def fit_step_time(points: list[dict[str, Any]]) -> StepTimeModel:
    """Least-squares line through ``points`` (each with ``flops`` and ``seconds`` per step). The intercept may be
    negative: every step runs a whole forward, so a step's FLOPs never fall near 0, and a backward FLOP often costs
    more time than a forward one (a line through the measured steps then meets 0 seconds at a positive FLOPs count).
    The line must rise with FLOPs and give every measured configuration a positive time; otherwise time is taken
    proportional to FLOPs. One point, or points of one FLOPs count, give the proportional model. Points marked
    ``own_scale`` stay off the line and get their own factor on it."""
    own = [p for p in points if p.get("own_scale")]
    line = fit_line([p for p in points if not p.get("own_scale")], [float(p["flops"]) for p in own])
    scales = {p["label"]: float(p["seconds"]) / line.seconds(1, float(p["flops"])) for p in own}
    return StepTimeModel(line.per_step_s, line.per_flop_s, tuple(points), scales)


def fit_line(points: list[dict[str, Any]], also_at: list[float] = ()) -> StepTimeModel:
    """The line of :func:`fit_step_time` through ``points`` alone; it must also be positive at the FLOPs counts
    ``also_at`` (those of the configurations scaled on it)."""
    if not points:
        raise ValueError("fit_step_time needs at least one measured configuration on its line.")
    xs, ys = [float(p["flops"]) for p in points], [float(p["seconds"]) for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread > 0 and min([*xs, *also_at]) > 0:
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
        intercept = mean_y - slope * mean_x
        if slope >= 0 and intercept + slope * min([*xs, *also_at]) > 0:
            return StepTimeModel(intercept, slope, tuple(points))
    if not any(xs):
        return StepTimeModel(mean_y, 0.0, tuple(points))
    return StepTimeModel(0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs), tuple(points))
