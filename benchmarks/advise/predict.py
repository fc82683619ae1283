"""From the probe's measurements to a prediction: how much sooner each candidate should reach DropBP off's loss in
the same time, and the recommendation (a setting, or off).

The predictor is *useful gradient per second against exact backprop's*: a candidate's step is ``speed`` times
cheaper (exact's median forward+backward time over its own), and keeps ``kept`` of what an exact step contributes
towards another batch (its gradient's mean cosine with another batch's exact gradient, over exact backprop's own
cosine with it). Predicted speed-up = ``speed x kept``. ``kept`` comes in two forms, both reported: per mask (what one
step does) and of the mean over the masks (what steps average to, as an optimiser's moments do). The uncertainty is
a seeded bootstrap over the probe's rounds (10th to 90th percentile).
"""
from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from .probe import Measured

#: The two forms of ``kept``: per mask (the default basis of the recommendation) and of the masks' mean.
BASES = ("per-mask", "mean-of-masks")
BOOTSTRAP = 400


@dataclass(frozen=True)
class Prediction:
    """One candidate's prediction: its step-cost ``speed`` over exact backprop (measured; ``flops_speed`` by the
    FLOPs model, for comparison), ``kept`` per mask and of the mean
    of masks, the predicted speed-up to DropBP off's loss on each basis, and the interval of the first."""

    label: str
    drop_fraction: float
    flops_speed: float | None
    speed: float
    kept: float
    kept_mean: float
    predicted: float
    predicted_mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kept(candidate: list[float], exact: list[float], rounds: list[int]) -> float:
    base = statistics.fmean(exact[r] for r in rounds)
    return statistics.fmean(candidate[r] for r in rounds) / base if base > 0 else 0.0


def predict(exact: Measured, candidate: Measured, *, seed: int = 0) -> Prediction:
    """``candidate`` against exact backprop (see the module docstring)."""
    speed = statistics.median(exact.seconds) / statistics.median(candidate.seconds)
    every = list(range(len(exact.next_cos)))
    kept = _kept(candidate.next_cos, exact.next_cos, every)
    kept_mean = _kept(candidate.mean_next_cos, exact.mean_next_cos, every)
    draw = random.Random(seed)
    samples = sorted(speed * _kept(candidate.next_cos, exact.next_cos, draw.choices(every, k=len(every)))
                     for _ in range(BOOTSTRAP))
    low, high = samples[int(0.1 * BOOTSTRAP)], samples[int(0.9 * BOOTSTRAP) - 1]
    flops_speed = None if candidate.flops_ratio is None else 1.0 / candidate.flops_ratio
    return Prediction(candidate.label, candidate.drop_fraction, flops_speed, speed, kept, kept_mean, speed * kept,
                      speed * kept_mean, low, high)


def recommend(predictions: list[Prediction], basis: str = "per-mask") -> Prediction | None:
    """The candidate with the largest predicted speed-up on ``basis``, or None (DropBP off) when none is above 1."""
    if basis not in BASES:
        raise ValueError(f"basis must be one of {', '.join(BASES)}, got {basis!r}.")
    value = (lambda p: p.predicted) if basis == "per-mask" else (lambda p: p.predicted_mean)
    best = max(predictions, key=value, default=None)
    return best if best is not None and value(best) > 1.0 else None
