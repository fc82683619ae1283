"""The one training loop of the studies that train a contender themselves (convergence, regime): steps timed by the
step clock and charged their FLOPs, evaluations at the start, on a schedule and at the end, one study run back."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.progress import progress_bar

from ..harness import CurvePoint, step_clock
from .contender import Contender, ContenderTrainer
from .runner import StudyRun

#: ``evaluate(model) -> (validation loss, exact match or None)``.
Evaluate = Callable[[torch.nn.Module], tuple[float, "float | None"]]


def train_contender(trainer: ContenderTrainer, contender: Contender, *, lr: float, seed: int, steps: int,
                    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]], evaluate: Evaluate,
                    eval_every: int, backend: Backend, progress: bool, examples_per_step: int | None = None,
                    notes: Callable[[ContenderTrainer], dict[str, Any]] | None = None) -> StudyRun:
    """The one training loop of the studies that train a :class:`ContenderTrainer` themselves: ``steps`` optimizer
    steps on ``batch(step)``, evaluated at the start, every ``eval_every`` steps and at the end; each step timed by
    the step clock (the device synchronised around it) and charged its training FLOPs. ``notes(trainer)``, read
    before the technique is removed, is kept with the run; ``examples_per_step`` fills each point's examples."""
    clock, _ = step_clock(backend)

    def point(step: int, elapsed: float, flops: float) -> CurvePoint:
        val_loss, match = evaluate(trainer.model)
        return CurvePoint(step=step, time_s=elapsed, flops=flops, val_loss=val_loss, exact_match=match,
                          examples=None if examples_per_step is None else step * examples_per_step)

    curve = [point(0, 0.0, 0.0)]
    elapsed = flops = 0.0
    bar = progress_bar(range(steps), desc=f"{contender.label} lr={lr:g} seed={seed}", enabled=progress)
    for step in bar:
        ids, labels = batch(step)
        backend.synchronize()
        start = clock()
        flops += trainer.step(step, ids, labels)[1]
        backend.synchronize()
        elapsed += clock() - start
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append(point(step + 1, elapsed, flops))
            shown = {"val": f"{curve[-1].val_loss:.3f}"}
            if curve[-1].exact_match is not None:
                shown["em"] = f"{curve[-1].exact_match:.2f}"
            bar.set_postfix(**shown)
    bar.close()
    kept = notes(trainer) if notes is not None else {}
    return StudyRun(label=contender.label, steps=steps, train_time_s=elapsed, train_flops=flops, curve=curve,
                    realized_drop_fraction=trainer.close(), kind=contender.kind, rate=contender.rate, lr=lr,
                    seed=seed, notes=kept)
