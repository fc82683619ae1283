"""What a training driver needs from a per-step method that changes the backward pass (DropBP, LayerDrop, PLD)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class StepPolicy(Protocol):
    """Drawn per step from ``(seed, step)``; owns whether the step's backward runs."""

    step: int | None

    @property
    def mask(self) -> tuple[bool, ...]:
        """The current step's mask (True = dropped)."""
        ...

    def begin_step(self, step: int | None = None) -> tuple[bool, ...]:
        """Choose what the next forward pass drops; returns the mask (True = dropped)."""
        ...

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> bool:
        """Run the backward unless the step left nothing to train; returns whether it ran."""
        ...

    def step_effect(self, names: Sequence[str], realised: bool = False) -> dict[str, list[float]]:
        """What this step left out (``realised``: what the steps so far left out on average), as the keyword
        arguments of :meth:`~dropbp.core.step_flops.StepFlops.step` over the branches ``names``."""
        ...

    def realized_drop_fraction(self) -> float:
        """The share of the work dropped so far (FLOPs-weighted for DropBP, blocks for LayerDrop)."""
        ...

    def report(self) -> dict[str, Any]:
        """JSON-ready summary of what was asked and what was realised."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state that a resumed run restores with :meth:`load_state_dict`."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        ...

    def remove(self) -> None:
        """Restore the model."""
        ...
