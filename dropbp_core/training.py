"""A minimal causal-LM training loop with DropBP, shared by the demo, the benchmarks and the tests."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .engine import DropBP, MaskSpec
from .schedule import AllocationSchedule
from .progress import progress_bar


def training_step(model: nn.Module, batch: torch.Tensor, optimizer: torch.optim.Optimizer | None,
                  dropbp: DropBP | None, backend, step: int, *, dtype: torch.dtype | None = None,
                  mask: MaskSpec | None = None) -> float:
    """One step: draw the mask, forward, backward (skipped when nothing can get a gradient), optimizer step.

    With ``dropbp=None`` it is the plain baseline step; ``mask`` forces this step's mask. Returns the loss.
    """
    if dropbp is not None:
        dropbp.begin_step(step, mask=mask)
    with backend.autocast(dtype):
        loss = model(input_ids=batch, labels=batch).loss
    if dropbp is not None:
        dropbp.backward(loss)
    else:
        loss.backward()
        backend.after_backward()
    if optimizer is not None:
        optimizer.step()
        backend.after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train(model: nn.Module, batches: Callable[[int], torch.Tensor], optimizer: torch.optim.Optimizer,
          dropbp: DropBP | None, backend, steps: int, *, start_step: int = 0, dtype: torch.dtype | None = None,
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
