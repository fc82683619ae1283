"""Stop a run that diverged instead of training on and checkpointing garbage.

A loss is *diverged* when it is not finite, or when it is more than ``factor`` times the running mean of the losses
before it and above the highest loss of the run's first steps (so a spike on a loss that is already near zero is
not taken for a blow-up). The driver checks each optimizer step's loss before it writes anything of that step.
"""
from __future__ import annotations

import math

from dropbp.core.errors import DropBPError

#: Steps whose losses set the run's starting level (and are never judged against a running mean).
FIRST_STEPS = 10


class TrainingDiverged(DropBPError):
    """The loss diverged; the CLI exits 3 (the last good checkpoint is kept, no checkpoint of the bad step is
    written)."""

    exit_code = 3


class DivergenceGuard:
    """Feed each step's loss to :meth:`check`; it raises :class:`TrainingDiverged` on a diverged one. ``factor`` 0
    checks for non-finite losses only."""

    def __init__(self, factor: float = 10.0, decay: float = 0.9) -> None:
        self.factor, self.decay = factor, decay
        self.mean: float | None = None
        self.start_level = -math.inf
        self.seen = 0

    def check(self, step: int, loss: float) -> None:
        """Raise when ``loss`` (of optimizer step ``step``, 1-based) diverged; else fold it into the running mean."""
        advice = ("lower optim.lr, or set optim.max_grad_norm; the last good checkpoint is kept (--resume continues "
                  "from it)")
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training diverged at step {step}: the loss is {loss}; {advice}.")
        if (self.factor and self.mean is not None and self.seen >= FIRST_STEPS and loss > self.factor * self.mean
                and loss > self.start_level):
            raise TrainingDiverged(f"training diverged at step {step}: the loss {loss:.4g} is more than "
                                   f"{self.factor:g} times its running mean {self.mean:.4g} and above where the run "
                                   f"started; {advice}.")
        if self.seen < FIRST_STEPS:
            self.start_level = max(self.start_level, loss)
        self.seen += 1
        self.mean = loss if self.mean is None else self.decay * self.mean + (1 - self.decay) * loss
