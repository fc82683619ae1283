"""A minimal causal-LM training loop with DropBP, shared by the CLI, the benchmarks and the tests.

This loop is a *driver*: it owns the backward and the device's step boundaries, through the backend
(:meth:`Backend.backward <dropbp.backends.Backend.backward>`, :meth:`Backend.optimizer_step
<dropbp.backends.Backend.optimizer_step>`); the engine only says whether a step had anything to train.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dropbp.backends import Backend
from dropbp.core.engine import DropBP, MaskSpec
from dropbp.core.progress import progress_bar
from dropbp.core.schedule import AllocationSchedule


def training_step(model: nn.Module, batch: torch.Tensor, optimizer: torch.optim.Optimizer | None,
                  dropbp: DropBP | None, backend: Backend, step: int, *, dtype: torch.dtype | None = None,
                  mask: MaskSpec | None = None) -> float:
    """One step: draw the mask, forward, backward (skipped when nothing can get a gradient), optimizer step.

    With ``dropbp=None`` it is the plain baseline step; ``mask`` forces this step's mask. Returns the loss.
    """
    if dropbp is not None:
        dropbp.begin_step(step, mask=mask)
    with backend.autocast(dtype):
        loss = model(input_ids=batch, labels=batch).loss
    backend.backward(loss, dropbp)
    if optimizer is not None:
        backend.optimizer_step(optimizer)
    return float(loss.detach())


def train(model: nn.Module, batches: Callable[[int], torch.Tensor], optimizer: torch.optim.Optimizer,
          dropbp: DropBP | None, backend: Backend, steps: int, *, start_step: int = 0, dtype: torch.dtype | None = None,
          progress: bool = True, desc: str = "train", schedule: AllocationSchedule | None = None) -> list[float]:
    """Run ``steps`` training steps; ``batches(step)`` gives the token batch of each step. Returns the losses.
    A ``schedule`` re-derives the drop rates from sensitivities when it says so."""
    model.train()
    losses: list[float] = []
    bar = progress_bar(range(start_step, start_step + steps), desc=desc, enabled=progress)
    for step in bar:
        batch = batches(step).to(backend.device)
        if schedule is not None:
            schedule.before_step(step, batch)
        losses.append(training_step(model, batch, optimizer, dropbp, backend, step, dtype=dtype))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses
