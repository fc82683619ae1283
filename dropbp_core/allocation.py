"""Drop-rate allocation under a FLOPs budget: uniform rates, and the paper's greedy allocator on sensitivities."""
from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import AllocationError, ConfigError

_EPS = 1e-9


def validate_drop_rate(rate: float, field: str = "drop_rate") -> float:
    """Return ``rate`` as a float if it lies in [0, 1); raise :class:`ConfigError` naming ``field`` otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) < 1.0:
        raise ConfigError(
            f"{field} must be a number in [0, 1) (the average fraction of branch FLOPs whose backward is dropped, "
            f"e.g. 0.5, 0.75 or 0.875), got {rate!r}."
        )
    return float(rate)


def _total_flops(flops: Sequence[float]) -> float:
    total = float(sum(flops))
    if total <= 0:
        raise AllocationError("the branches have zero FLOPs in total, so a FLOPs budget cannot be set; check the model shape.")
    return total


def drop_fraction(flops: Sequence[float], rates: Sequence[float]) -> float:
    """FLOPs-weighted drop fraction ``sum f_i p_i / sum f_i`` of per-branch rates (or of a 0/1 mask)."""
    if len(flops) != len(rates):
        raise ConfigError(f"got {len(rates)} rates for {len(flops)} branches.")
    return sum(float(f) * float(p) for f, p in zip(flops, rates)) / _total_flops(flops)


def uniform_rates(num_branches: int, drop_rate: float) -> list[float]:
    """Every branch gets the same rate; the FLOPs budget then holds with equality."""
    rate = validate_drop_rate(drop_rate)
    return [rate] * num_branches


def validate_rates(rates: Sequence[float], num_branches: int, field: str = "rates") -> list[float]:
    """Check a user-given per-branch rate list: one rate in [0, 1) per branch."""
    rates = list(rates)
    if len(rates) != num_branches:
        raise ConfigError(f"{field} must hold one rate per branch ({num_branches}), got {len(rates)}.")
    return [validate_drop_rate(r, f"{field}[{i}]") for i, r in enumerate(rates)]


def greedy_paper_rates(
    flops: Sequence[float],
    sensitivity: Sequence[float],
    drop_rate: float,
    *,
    step: float = 0.1,
    cap: float = 0.9,
    min_rate: float = 0.0,
) -> list[float]:
    """The paper's greedy allocator.

    All rates start at ``min_rate``. While the kept FLOPs ``sum f_i (1 - p_i)`` exceed ``(1 - drop_rate) * sum f_i``,
    raise by ``step`` the branch whose next step costs least, where raising branch ``i`` to rate ``r`` costs
    ``C_i * r`` (ties go to the earlier branch); a branch stops at ``cap``. Rates are tracked as whole steps, so no
    floating-point drift accumulates.
    """
    target = validate_drop_rate(drop_rate)
    if len(flops) != len(sensitivity):
        raise ConfigError(f"got {len(sensitivity)} sensitivities for {len(flops)} branches.")
    if not 0 < step <= 1:
        raise ConfigError(f"step must be in (0, 1], got {step}.")
    if not 0 <= min_rate <= cap < 1:
        raise ConfigError(f"need 0 <= min_rate <= cap < 1, got min_rate={min_rate}, cap={cap}.")
    if any(c < 0 for c in sensitivity):
        raise ConfigError("sensitivities must be >= 0.")
    total = _total_flops(flops)
    max_steps = math.floor((cap - min_rate) / step + 1e-6)  # whole steps from min_rate that stay <= cap
    reachable = drop_fraction(flops, [min_rate + max_steps * step] * len(flops))
    if reachable + _EPS < target:
        raise AllocationError(
            f"drop_rate {target} is infeasible with cap {cap} and step {step}: the highest FLOPs-weighted rate these "
            f"allow is {reachable:.4f}. Lower drop_rate or raise the cap."
        )
    steps = [0] * len(flops)
    rate = lambda i: min_rate + steps[i] * step  # noqa: E731
    budget = (1.0 - target) * total
    while sum(float(f) * (1.0 - rate(i)) for i, f in enumerate(flops)) > budget + _EPS * total:
        candidates = [i for i in range(len(flops)) if steps[i] < max_steps]
        best = min(candidates, key=lambda i: (sensitivity[i] * (rate(i) + step), i))
        steps[best] += 1
    return [round(rate(i), 12) for i in range(len(flops))]
