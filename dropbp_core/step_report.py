"""The DropBP engine's per-step bookkeeping, apart from its hooks: which branches each counted step dropped, the
counters behind :meth:`report`, and the state a resumed run needs to continue them.

A mixin of :class:`~dropbp.core.engine.DropBP`: it reads the engine's ``branches``, ``flops``, ``rates``, ``seed``,
``sampler``, ``schedule``, ``step`` and mask, and restores rates through the engine's ``set_rates``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .allocation import drop_fraction
from .state import check_state

#: The step counters behind :meth:`StepReport.report`, kept in :meth:`StepReport.state_dict`.
COUNTERS = ("steps_counted", "all_dropped_steps", "skipped_backward_steps", "uncounted_steps",
            "no_trainable_path_steps", "interrupted_forwards")


class StepReport:
    """Counted steps and realised rates of a DropBP engine, its report and its resumable state."""

    def reset_counters(self) -> None:
        """Forget the realised-rate statistics."""
        self.drop_counts = [0] * len(self.branches)
        for name in COUNTERS:
            setattr(self, name, 0)
        self.scheduled_sum = 0.0

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state a resumed run needs to continue as if never stopped: the rates in force, the last step
        and every counter behind :meth:`report`. Masks need nothing more: they are a function of (seed, step)."""
        return {"branches": [b.name for b in self.branches], "rates": list(self.rates), "step": self.step,
                "drop_counts": list(self.drop_counts), "scheduled_sum": self.scheduled_sum,
                **{name: getattr(self, name) for name in COUNTERS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (refused, with nothing changed, for another model's branches)."""
        check_state("DropBP", state, ("branches", "rates", "step", "drop_counts", "scheduled_sum", *COUNTERS),
                    names=[b.name for b in self.branches])
        self.set_rates(state["rates"])
        self.step = None if state["step"] is None else int(state["step"])
        self.drop_counts = [int(count) for count in state["drop_counts"]]
        for name in COUNTERS:
            setattr(self, name, int(state[name]))
        self.scheduled_sum = float(state["scheduled_sum"])

    def realized_rates(self) -> list[float]:
        """Per-branch fraction of counted steps in which the branch was dropped."""
        return [count / max(self.steps_counted, 1) for count in self.drop_counts]

    def step_effect(self, names: Sequence[str], realised: bool = False) -> dict[str, list[float]]:
        """This step's mask (``realised``: the realised rates so far) as :meth:`StepFlops.step`'s ``no_backward``."""
        values = dict(zip((b.name for b in self.branches), self.realized_rates() if realised else self._mask))
        return {"no_backward": [float(values.get(name, 0.0)) for name in names]}

    def realized_drop_fraction(self) -> float:
        """FLOPs-weighted fraction of branch compute whose backward was dropped over the counted steps."""
        return drop_fraction(self.flops, self.realized_rates())

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: settings, per-branch asked vs realised rates, step counts."""
        realized = self.realized_rates()
        counts = {name: getattr(self, name) for name in ("all_dropped_steps", "skipped_backward_steps",
                                                          "uncounted_steps", "no_trainable_path_steps")}
        return {"sampler": self.sampler.name, "seed": self.seed, "steps": self.steps_counted, **counts,
                "asked_drop_fraction": self._asked,
                "schedule": "none" if self.schedule is None else self.schedule.describe(),
                "scheduled_drop_fraction": self.scheduled_sum / max(self.steps_counted, 1),
                "realized_drop_fraction": drop_fraction(self.flops, realized),
                "trained_output_projections": sum(layer is not None for layer in self._projections.layers),
                "branches": [{**b.to_dict(), "asked_rate": r, "realized_rate": q}
                             for b, r, q in zip(self.branches, self.rates, realized)]}

