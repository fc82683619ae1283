"""When the engine's drop rates are re-derived from branch sensitivities during training.

- ``uniform``: every branch at the target rate, all along.
- ``sensitivity``: uniform until ``allocate_at`` of training (the paper uses 10%), then one sensitivity estimate on
  that step's batch and the allocator's rates from then on.
- ``depth``: from the first step, rates from each branch's depth alone (:func:`depth_sensitivity`: a branch's
  cost is the number of blocks whose gradient passes through it); nothing is measured.
- ``online``: uniform at first; sensitivities refreshed from ordinary steps (:class:`OnlineSensitivity`) and rates
  re-allocated every ``every`` steps.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .allocation import ALLOCATORS, allocate, depth_sensitivity, drop_fraction
from .engine import DropBP
from .errors import ConfigError
from .sensitivity import SENSITIVITY_METHODS, Batch, OnlineSensitivity, compute_sensitivity
from .state import check_state

ALLOCATION_MODES: tuple[str, ...] = ("uniform", "sensitivity", "depth", "online")


class RateAllocation:
    """Call :meth:`before_step` with each step's batch before its forward pass."""

    def __init__(self, model: nn.Module, dropbp: DropBP, *, mode: str = "uniform", drop_rate: float,
                 total_steps: int, allocate_at: float = 0.1, sensitivity: str = "fast", allocator: str = "paper",
                 cap: float = 0.9, every: int = 50, seed: int = 0) -> None:
        self.check_settings(mode, allocate_at=allocate_at, sensitivity=sensitivity, allocator=allocator, every=every)
        self.model, self.dropbp, self.mode = model, dropbp, mode
        self.drop_rate, self.allocator, self.cap, self.sensitivity, self.seed = drop_rate, allocator, cap, sensitivity, seed
        self.allocate_step = int(round(allocate_at * total_steps))
        self.every = every
        self.online: OnlineSensitivity | None = None
        self._online_state: dict[str, Any] | None = None  # loaded before the estimator exists (it needs a batch)
        self.events: list[dict[str, Any]] = []

    @staticmethod
    def check_settings(mode: str, *, allocate_at: float = 0.1, sensitivity: str = "fast", allocator: str = "paper",
                   every: int = 50) -> None:
        """Refuse settings this allocation cannot run, naming the setting and what it allows."""
        if mode not in ALLOCATION_MODES:
            raise ConfigError(f"allocation must be one of {', '.join(ALLOCATION_MODES)}, got {mode!r}.")
        if sensitivity not in SENSITIVITY_METHODS:
            raise ConfigError(f"sensitivity must be one of {', '.join(SENSITIVITY_METHODS)}, got {sensitivity!r}.")
        if allocator not in ALLOCATORS or allocator == "uniform" and mode != "uniform":
            allowed = ", ".join(a for a in ALLOCATORS if a != "uniform")
            raise ConfigError(f"allocator must be one of {allowed} for allocation {mode!r}, got {allocator!r}.")
        if not 0 <= allocate_at < 1:
            raise ConfigError(f"allocate_at must be a fraction of training in [0, 1), got {allocate_at}.")
        if every < 1:
            raise ConfigError(f"every must be a positive number of steps, got {every}.")

    def _apply(self, step: int, values: list[float], cost: float | None) -> None:
        rates = allocate(self.allocator, self.dropbp.flops, values, self.drop_rate, cap=self.cap)
        self.dropbp.set_rates(rates)
        self.events.append({"step": step, "sensitivity": values, "rates": rates, "step_equivalents": cost,
                            "drop_fraction": drop_fraction(self.dropbp.flops, rates)})

    def before_step(self, step: int, batch: Batch) -> None:
        """Allocate when this step is one this allocation names."""
        if self.mode == "depth" and not self.events:
            self._apply(step, depth_sensitivity([branch.layer for branch in self.dropbp.branches]), 0.0)
        elif self.mode == "sensitivity" and step == self.allocate_step:
            result = compute_sensitivity(self.sensitivity, self.model, self.dropbp, batch, seed=self.seed)
            self._apply(step, result.values, result.step_equivalents)
        elif self.mode == "online":
            if self.online is None:
                self.online = OnlineSensitivity(self.model, self.dropbp, batch)
                if self._online_state is not None:
                    self.online.load_state_dict(self._online_state)
                    self._online_state = None
            if step % self.every == 0:
                values = self.online.current()  # None until a step has fed the estimates
                if values is not None:
                    self._apply(step, values, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready: the allocations made so far and the online estimates (the rates in force are the engine's)."""
        online = self.online.state_dict() if self.online is not None else self._online_state
        return {"mode": self.mode, "events": [dict(event) for event in self.events], "online": online}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; online estimates are applied as soon as the estimator exists."""
        check_state("RateAllocation", state, ("mode", "events", "online"))
        if state["mode"] != self.mode:
            raise ConfigError(f"RateAllocation state was saved in mode {state['mode']!r}, this one runs "
                              f"{self.mode!r}.")
        self.events = [dict(event) for event in state["events"]]
        if self.online is not None and state["online"] is not None:
            self.online.load_state_dict(state["online"])
        else:
            self._online_state = state["online"]

    def close(self) -> None:
        """Detach the online estimator's hooks, if any."""
        if self.online is not None:
            self.online.close()
