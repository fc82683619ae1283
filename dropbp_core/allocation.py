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
    if isinstance(rates, (str, bytes, dict)) or not hasattr(rates, "__iter__"):
        raise ConfigError(f"{field} must be a list of {num_branches} numbers in [0, 1), one per branch; "
                          f"got {rates!r}.")
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


def check_feasible(drop_rate: float, cap: float) -> None:
    """Raise :class:`AllocationError` when no allocation under ``cap`` can reach ``drop_rate``."""
    if cap + _EPS < drop_rate:
        raise AllocationError(
            f"drop_rate {drop_rate} is infeasible with cap {cap}: no branch may exceed the cap, so the FLOPs-weighted "
            f"rate is at most {cap}. Lower drop_rate or raise the cap."
        )


def optimal_rates(flops: Sequence[float], sensitivity: Sequence[float], drop_rate: float, *, cap: float = 0.9,
                  min_rate: float = 0.0) -> list[float]:
    """The exact minimiser of the paper's objective ``sum_i C_i p_i^2`` under the FLOPs budget.

    Minimise ``sum_i C_i p_i^2`` subject to ``sum_i f_i p_i = drop_rate * sum_i f_i`` and
    ``min_rate <= p_i <= cap``. The optimality conditions give ``p_i = clip(lam * f_i / C_i, min_rate, cap)``:
    a branch's rate grows with the FLOPs it saves and shrinks with its sensitivity (the paper's greedy ignores the
    FLOPs, so it over-drops cheap branches); ``lam`` is found by bisection so the budget holds to 1e-9, never under.
    Rates are continuous; a branch with zero sensitivity goes to ``cap``.
    """
    target = validate_drop_rate(drop_rate)
    if len(flops) != len(sensitivity):
        raise ConfigError(f"got {len(sensitivity)} sensitivities for {len(flops)} branches.")
    if not 0 <= min_rate <= cap < 1:
        raise ConfigError(f"need 0 <= min_rate <= cap < 1, got min_rate={min_rate}, cap={cap}.")
    if any(c < 0 for c in sensitivity):
        raise ConfigError("sensitivities must be >= 0.")
    _total_flops(flops)
    check_feasible(target, cap)

    def rates_for(lam: float) -> list[float]:
        out = []
        for f, c in zip(flops, sensitivity):
            raw = cap if c <= 0 else lam * float(f) / float(c)
            out.append(min(cap, max(min_rate, raw)))
        return out

    if drop_fraction(flops, rates_for(0.0)) >= target:
        return rates_for(0.0)
    lo, hi = 0.0, 1.0
    while drop_fraction(flops, rates_for(hi)) < target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if drop_fraction(flops, rates_for(mid)) >= target:
            hi = mid
        else:
            lo = mid
        if drop_fraction(flops, rates_for(hi)) - target < 1e-9:
            break
    return rates_for(hi)


def depth_sensitivity(layers: Sequence[int]) -> list[float]:
    """A sensitivity from position alone: a branch in block ``l`` sits on the backward path of every trainable
    block at or below ``l``, and dropping it takes its Jacobian out of all their gradients, so its cost is the
    ``l + 1`` blocks it reaches. Allocated under a FLOPs budget, low blocks drop often and the top rarely."""
    return [float(layer) + 1.0 for layer in layers]


ALLOCATORS: tuple[str, ...] = ("uniform", "paper", "optimal")


def allocate(name: str, flops: Sequence[float], sensitivity: Sequence[float] | None, drop_rate: float, *,
             cap: float = 0.9, step: float = 0.1, min_rate: float = 0.0) -> list[float]:
    """Per-branch rates from the allocator called ``name`` ('uniform', 'paper' or 'optimal')."""
    if name == "uniform":
        return uniform_rates(len(flops), drop_rate)
    if name not in ALLOCATORS:
        raise ConfigError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {name!r}.")
    if sensitivity is None:
        raise ConfigError(f"allocator {name!r} needs per-branch sensitivities.")
    if name == "paper":
        return greedy_paper_rates(flops, sensitivity, drop_rate, step=step, cap=cap, min_rate=min_rate)
    return optimal_rates(flops, sensitivity, drop_rate, cap=cap, min_rate=min_rate)
