"""A study's contender, in the one shape every time-to-accuracy benchmark uses, and the trainer that puts one on a
model: its technique, rate policy and allocation, then one optimizer step at a time with that step's FLOPs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.assembly import AllocationSpec, TechniqueSpec, build_technique
from dropbp.core.rate_schedule import RateSchedule
from dropbp.core.step_flops import StepFlops
from dropbp.core.techniques import Technique
from dropbp.recipes.for_benchmarks import StepRunner, lr_scheduler

from ..harness import step_clock

#: Drop-rate schedules a contender may follow: constant, a decay to 0 (cosine, linear, steps) and ``warmup`` (exact
#: backprop for the first quarter, then the rate).
CONTENDER_SCHEDULES = ("constant", "cosine", "linear", "steps", "warmup")


@dataclass(frozen=True, repr=False)
class Contender:
    """One configuration of a study. ``kind`` groups contenders in tables and figures (baseline, dropbp,
    sensitivity, layerdrop, ...); ``technique`` is a registered technique's name, or ``off`` for exact backprop;
    ``allocation`` is ``uniform`` or the allocator of sensitivity-based rates (``paper``, ``optimal``), measured at
    10% of the run; ``overrides`` are recipe keys, for studies that train a recipe; ``engine``: further keywords of
    the DropBP engine (any it takes, see :func:`~dropbp.core.engine_keywords`)."""

    label: str
    kind: str = "baseline"
    technique: str = "off"
    rate: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()
    allocation: str = "uniform"
    schedule: str = "constant"
    sampler: str = "bernoulli"
    overrides: tuple[str, ...] = ()
    engine: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:  # the dataclass form, ``engine`` shown only when set: cached runs' keys stay put
        shown = [f.name for f in fields(self) if f.name != "engine" or self.engine]
        return f"Contender({', '.join(f'{name}={getattr(self, name)!r}' for name in shown)})"

    @property
    def is_baseline(self) -> bool:
        """Exact backprop: what every contender is compared with."""
        return self.technique == "off"

    def spec(self, total_steps: int, seq_len: int, pool_size: int | None = None) -> TechniqueSpec:
        """This contender as the technique :func:`~dropbp.core.build_technique` puts on a model for a run of
        ``total_steps`` steps of ``seq_len`` tokens (``pool_size``: the pool sampler's masks, none: the engine's)."""
        engine: dict[str, Any] = {"seq_len": seq_len, "sampler": self.sampler, **dict(self.engine)}
        if pool_size is not None:
            engine["pool_size"] = pool_size
        if self.schedule != "constant":
            engine["schedule"] = study_schedule(self.schedule, total_steps)
        allocation = (AllocationSpec() if self.allocation == "uniform"
                      else AllocationSpec(mode="sensitivity", allocator=self.allocation))
        return TechniqueSpec(self.technique, self.rate, dict(self.options), engine, allocation)

    @property
    def on_dropbp_line(self) -> bool:
        """Whether the step-time model reads this contender off its line by FLOPs (exact backprop and DropBP under
        any rate policy); any other technique is timed as itself and gets its own factor on the line."""
        return self.technique in ("off", "dropbp")


def study_schedule(kind: str, total: int) -> RateSchedule:
    """A fixed drop-rate schedule over ``total`` steps: a decay to 0 (cosine, linear, steps), or ``warmup``: exact
    backprop for the first quarter, then the rate."""
    if kind == "warmup":
        return RateSchedule("constant", total_steps=total, warmup_steps=total // 4)
    return RateSchedule(kind, total_steps=total, end=0.0)


def attach(model: torch.nn.Module, contender: Contender, *, total_steps: int, seq_len: int, seed: int,
           backward: float = 1.0, pool_size: int | None = None) -> tuple[Technique | None, StepFlops]:
    """Put ``contender``'s technique on ``model`` for a run of ``total_steps`` (None for the baseline), with the
    FLOPs model its steps are charged by (``backward``: a kept block's backward in forwards, 1 for adapters)."""
    flops_model = StepFlops(model, seq_len, backward=backward)
    if contender.is_baseline:
        return None, flops_model
    return build_technique(model, contender.spec(total_steps, seq_len, pool_size), total_steps=total_steps,
                           seed=seed), flops_model


@dataclass
class ContenderTrainer:
    """One contender's model, technique and optimizer, ready to train: :meth:`step` runs one optimizer step."""

    model: torch.nn.Module
    technique: Technique | None
    runner: StepRunner
    flops_model: StepFlops

    def step(self, step: int, ids: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, float]:
        """Optimizer step ``step`` on one batch (labels: the ids themselves when None); its training loss and its
        training FLOPs (FLOPs model, at what the technique did this step)."""
        batch: Any = ids if labels is None else {"input_ids": ids, "labels": labels}
        if self.technique is not None:
            self.technique.before_step(step, batch)
        loss = self.runner.step(step, [ids if labels is None else (ids, labels)]).loss
        effect: dict[str, Any] = {}
        if self.technique is not None:
            effect = self.technique.step_effect(self.flops_model.names)
        return loss, self.flops_model.step(ids.numel(), **effect)

    def close(self) -> float:
        """Remove the technique; the realised drop fraction of the run."""
        if self.technique is None:
            return 0.0
        policy = self.technique.policy
        realized = policy.realized_drop_fraction() if policy is not None else 0.0
        self.technique.remove()
        return realized


def contender_trainer(model: torch.nn.Module, contender: Contender, lr: float, backend: Backend, *, total_steps: int,
                      seq_len: int, seed: int, backward: float = 1.0, warmup_steps: int | None = None,
                      pool_size: int | None = None) -> ContenderTrainer:
    """``model`` (in training mode) with ``contender``'s technique and AdamW at ``lr`` on its trainable weights;
    with ``warmup_steps``, a linear warm-up then cosine decay over ``total_steps``, else a constant rate."""
    technique, flops_model = attach(model.train(), contender, total_steps=total_steps, seq_len=seq_len, seed=seed,
                                  backward=backward, pool_size=pool_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = None if warmup_steps is None else lr_scheduler(optimizer, warmup_steps, total_steps, "cosine")
    policy = None if technique is None else technique.policy
    return ContenderTrainer(model, technique, StepRunner(model, backend, optimizer, policy, scheduler=scheduler),
                            flops_model)


def trainer_timer(trainer: ContenderTrainer, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
                  backend: Backend, *, warmup: int = 2) -> Callable[[int], list[tuple[float, float]]]:
    """A study clock's timer of ``trainer``'s steps (``batch(step)``: that step's ids and labels): the first call
    runs ``warmup`` untimed steps first; each call returns its steps' (seconds by the step clock, FLOPs)."""
    clock, _ = step_clock(backend)
    done = [0]

    def time_steps(count: int) -> list[tuple[float, float]]:
        if done[0] == 0:
            for step in range(warmup):
                trainer.step(step, *batch(step))
            done[0] = warmup
        timed = []
        for step in range(done[0], done[0] + count):
            ids, labels = batch(step)
            backend.synchronize()
            start = clock()
            flops = trainer.step(step, ids, labels)[1]
            backend.synchronize()
            timed.append((clock() - start, flops))
        done[0] += count
        return timed

    return time_steps
