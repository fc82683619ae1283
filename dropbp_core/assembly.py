"""One place where a technique is put on a model from its spec: ``dropbp train``, the studies, the Trainer callback
and a user's own loop all call :func:`build_technique`, so every driver gets the same knobs.

A :class:`TechniqueSpec` names the registered technique, its drop rate, its own options, DropBP's engine keywords
(whatever :class:`~dropbp.core.DropBP` takes besides the model, rate and seed: sampler, pool_size, seq_len, schedule,
train_output_projection, ...) and how rates are allocated (:class:`AllocationSpec`). A new engine knob is a keyword
of the engine: it reaches every driver through ``engine`` with no edit to them.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .engine import DropBP
from .rate_allocation import RateAllocation
from .techniques import Technique, apply_technique


@dataclass(frozen=True)
class AllocationSpec:
    """How DropBP's per-branch rates are allocated: ``mode`` uniform, sensitivity (measured once at ``allocate_at``
    of training with the ``sensitivity`` estimator), depth (by position, from the first step) or online (refreshed
    every ``every`` steps); ``allocator`` paper (greedy) or optimal; no branch's rate above ``cap``."""

    mode: str = "uniform"
    allocate_at: float = 0.1
    sensitivity: str = "fast"
    allocator: str = "paper"
    every: int = 50
    cap: float = 0.9

    def __post_init__(self) -> None:
        RateAllocation.check_settings(self.mode, allocate_at=self.allocate_at, sensitivity=self.sensitivity,
                                      allocator=self.allocator, every=self.every)

    def attach(self, technique: Technique, model: nn.Module, *, total_steps: int, seed: int,
               drop_rate: float | None = None) -> Technique:
        """Give ``technique`` (when it runs a DropBP engine) this allocation over a run of ``total_steps``, meeting
        ``drop_rate`` (none: the engine's asked rate); the technique is returned. Uniform rates are allocated too
        (nothing moves; the allocation is checkpointed with the run)."""
        engine = technique.engine
        if engine is not None:
            budget = engine.asked_drop_fraction if drop_rate is None else drop_rate
            technique.allocation = RateAllocation(
                model, engine, mode=self.mode, drop_rate=budget, total_steps=total_steps,
                allocate_at=self.allocate_at, sensitivity=self.sensitivity, allocator=self.allocator, cap=self.cap,
                every=self.every, seed=seed)
        return technique


#: The engine keywords a spec's ``engine`` may not set: the spec and :func:`build_technique` give them.
_GIVEN = frozenset({"self", "model", "drop_rate", "seed"})


def engine_keywords() -> tuple[str, ...]:
    """Every keyword :class:`~dropbp.core.DropBP` takes that a spec's ``engine`` may set, in signature order."""
    return tuple(name for name in inspect.signature(DropBP.__init__).parameters if name not in _GIVEN)


@dataclass(frozen=True)
class TechniqueSpec:
    """A technique as a driver asks for it: the registered ``technique`` at ``drop_rate``, its own ``options`` (its
    options dataclass or a mapping of its fields), DropBP's ``engine`` keywords (see :func:`engine_keywords`) and
    the rate ``allocation``. ``dropbp`` at rate 0 is DropBP off: exact backprop, nothing on the model."""

    technique: str = "dropbp"
    drop_rate: float = 0.0
    options: Any = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    allocation: AllocationSpec = field(default_factory=AllocationSpec)

    @property
    def is_off(self) -> bool:
        """Whether this spec is exact backprop (DropBP at rate 0): no technique is built."""
        return self.technique == "dropbp" and self.drop_rate == 0


def build_technique(model: nn.Module, spec: TechniqueSpec, *, total_steps: int, seed: int,
                    option_prefix: str = "") -> Technique | None:
    """``spec``'s technique on ``model`` for a run of ``total_steps`` optimizer steps, masks drawn from ``seed``, its
    allocation attached when it runs a DropBP engine; None when the spec is DropBP off. Errors name the technique's
    options with ``option_prefix`` in front (``technique.`` in a recipe)."""
    if spec.is_off:
        return None
    technique = apply_technique(model, spec.technique, spec.drop_rate, seed=seed, options=spec.options,
                                option_prefix=option_prefix, **dict(spec.engine))
    return spec.allocation.attach(technique, model, total_steps=total_steps, seed=seed, drop_rate=spec.drop_rate)
