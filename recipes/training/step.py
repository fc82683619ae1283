"""The one training step every driver in this project runs: ``dropbp train``, every benchmark and the Python API.

A step is: the policy's mask for the step (DropBP, LayerDrop, PLD, or none), then for each micro-batch a forward pass
under the precision's autocast and :meth:`Backend.backward <dropbp.backends.Backend.backward>` (which skips and counts
a backward with nothing to train, then cuts the device's graph), then gradient unscaling and clipping, the optimizer
step through :meth:`Backend.optimizer_step <dropbp.backends.Backend.optimizer_step>` (or the fp16 ``GradScaler``),
and the learning-rate schedule. A new drop policy plugs in here, and only here, through the
:class:`~dropbp.core.policy.StepPolicy` protocol. Freezing needs no policy: frozen weights simply have no gradient.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dropbp.backends import Backend
from dropbp.core.masks import MaskSpec
from dropbp.core.policy import StepPolicy

#: A micro-batch: token ids used as their own labels, or ``(input_ids, labels)``.
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
#: ``loss_fn(model, batch)``: the scalar loss of a micro-batch.
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def input_and_labels(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of a micro-batch (token ids alone are their own labels)."""
    return batch if isinstance(batch, tuple) else (batch, batch)


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """A Hugging Face causal LM's own loss (``labels`` shifted inside the model; -100 ignored)."""
    ids, labels = input_and_labels(batch)
    return model(input_ids=ids, labels=labels).loss


@dataclass
class StepResult:
    """What one optimizer step did: its mean micro-batch loss, the tokens it saw, whether any backward ran, and,
    when the runner is ``timed``, the seconds of its forward, backward and optimizer phases."""

    loss: float
    tokens: int
    backward_ran: bool
    phases: tuple[float, float, float] | None = None


@dataclass
class StepRunner:
    """Runs training steps on ``model`` (the module the forward calls: a DDP wrapper, a compiled model, or the model).

    ``timed=True`` synchronises the device before the step and after each phase, so that the forward, backward and
    optimizer seconds in :attr:`StepResult.phases` count finished device work (for benchmarks; it costs a little).
    ``optimizer=None`` runs forward and backward only.
    """

    model: nn.Module
    backend: Backend
    optimizer: torch.optim.Optimizer | None
    policy: StepPolicy | None = None
    autocast: torch.dtype | None = None
    scaler: Any = None  # torch.amp.GradScaler for fp16 autocast
    max_grad_norm: float | None = None
    scheduler: Any = None  # a torch LR scheduler stepped after each optimizer step
    loss_fn: LossFn = causal_lm_loss
    timed: bool = False
    _clock: list[float] = field(default_factory=list, repr=False)

    def begin(self, step: int, mask: MaskSpec | None = None) -> tuple[bool, ...] | None:
        """Draw (or, with ``mask``, force) the policy's mask for optimizer step ``step``; None without a policy."""
        if self.policy is None:
            return None
        if mask is None:
            return self.policy.begin_step(step)
        return self.policy.begin_step(step, mask=mask)  # type: ignore[call-arg]  # DropBP takes a forced mask

    def micro_step(self, batch: Batch, accumulation: int = 1) -> tuple[float, bool]:
        """Forward and backward of one micro-batch (its loss divided by ``accumulation``); returns the unscaled loss
        and whether a backward ran."""
        with self.backend.autocast(self.autocast):
            loss = self.loss_fn(self.model, batch)
        self._lap()
        scaled = loss / accumulation if accumulation != 1 else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        ran = self.backend.backward(scaled, self.policy)
        self._lap()
        return float(loss.detach()), ran

    def optimizer_step(self) -> None:
        """Unscale (fp16), clip to ``max_grad_norm``, step the optimizer and the schedule; gradients are zeroed."""
        if self.optimizer is None:
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            if params:
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.backend.after_optimizer_step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.backend.optimizer_step(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.step()

    def step(self, step: int, batches: Iterable[Batch], *, mask: MaskSpec | None = None) -> StepResult:
        """One optimizer step over the micro-batches of ``batches`` (gradient accumulation when there are several):
        all of them share the step's mask."""
        micro = list(batches)
        self._clock = []
        self._lap()
        self.begin(step, mask)
        losses, tokens, ran = [], 0, False
        forward = backward = 0.0
        for batch in micro:
            loss, did = self.micro_step(batch, len(micro))
            losses.append(loss)
            tokens += input_and_labels(batch)[0].numel()
            ran = ran or did
            if self.timed:
                forward += self._clock[-2] - self._clock[-3]
                backward += self._clock[-1] - self._clock[-2]
        self.optimizer_step()
        self._lap()
        phases = (forward, backward, self._clock[-1] - self._clock[-2]) if self.timed else None
        return StepResult(sum(losses) / len(losses), tokens, ran, phases)

    def _lap(self) -> None:
        if self.timed:
            self.backend.synchronize()
            self._clock.append(time.perf_counter())
