"""One regime-study contender made ready to train: the pre-trained model with LoRA (or QLoRA), its technique and
rate policy, AdamW with the study's cosine schedule, and one optimizer step with its FLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.adaptive_rate import AdaptiveRate
from dropbp.core.allocation_schedule import AllocationSchedule
from dropbp.core.rate_schedule import RateSchedule
from dropbp.core.step_flops import StepFlops
from dropbp.core.techniques import Technique, apply_technique
from dropbp.recipes import StepRunner, apply_method, build_model, lr_scheduler, quantize_4bit, step_costs

from .settings import TECHNIQUE_OPTIONS, Contender, RegimeSettings


def _build(settings: RegimeSettings, state: dict[str, torch.Tensor], seed: int, backend: Backend) -> torch.nn.Module:
    model = build_model("tiny", seed=1234, **settings.model_overrides)
    model.load_state_dict(state, strict=False)
    if settings.method == "qlora":
        model = quantize_4bit(model, backend)
    return apply_method(model, "lora", lora_rank=settings.lora_rank, seed=seed).train()


@dataclass
class ContenderTrainer:
    """One contender's model, technique and optimizer, ready to train: :meth:`step` runs one optimizer step."""

    contender: Contender
    model: torch.nn.Module
    applied: Technique | None
    runner: StepRunner
    flops_model: StepFlops

    @property
    def policy(self) -> Any:
        """The technique's engine (None for the baseline)."""
        return None if self.applied is None else self.applied.policy

    def step(self, step: int, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Optimizer step ``step`` on one batch; its training loss and its training FLOPs (FLOPs model)."""
        if self.applied is not None:
            self.applied.before_step(step, {"input_ids": ids, "labels": labels})
        loss = self.runner.step(step, [(ids, labels)]).loss
        effect: dict[str, Any] = {}
        if self.applied is not None:
            self.applied.after_step(step, loss)
            effect = self.applied.step_effect(self.flops_model.names)
        return loss, self.flops_model.step(ids.numel(), **effect)

    def close(self) -> float:
        """Remove the technique; the realised drop fraction of the run."""
        realized = self.policy.realized_drop_fraction() if self.policy is not None else 0.0
        if self.applied is not None:
            self.applied.remove()
        return realized


def prepare(contender: Contender, lr: float, seed: int, settings: RegimeSettings, state: dict[str, torch.Tensor],
            backend: Backend, total: int) -> ContenderTrainer:
    """The pre-trained model with LoRA (or QLoRA), the contender's technique over ``total`` steps and AdamW with
    the study's cosine schedule."""
    model = _build(settings, state, seed, backend)
    flops_model = StepFlops(model, settings.seq_len, backward=1.0)  # LoRA/QLoRA: input gradients only
    applied = None
    if contender.family != "baseline":
        technique = "dropbp" if contender.family in DROPBP_FAMILIES else contender.family
        options = {TECHNIQUE_OPTIONS.get(k, k): int(v) if k == "train_top" else v for k, v in contender.extra}
        engine: dict[str, Any] = {"seq_len": settings.seq_len}
        if contender.family == "schedule":
            engine["schedule"] = study_schedule(contender.schedule, total)
        if contender.family.startswith("adaptive"):
            engine["schedule"] = AdaptiveRate(step_cost=step_costs(flops_model, contender.rate))
        applied = apply_technique(model, technique, contender.rate, seed=seed, options=options, **engine)
    policy = None if applied is None else applied.policy
    if contender.family in ("sensitivity", "adaptive-sensitivity"):
        applied.allocation = AllocationSchedule(model, policy, mode="sensitivity", drop_rate=contender.rate,
                                                total_steps=total, allocate_at=0.1, seed=seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    runner = StepRunner(model, backend, optimizer, policy,
                        scheduler=lr_scheduler(optimizer, settings.warmup_steps, total, "cosine"))
    return ContenderTrainer(contender, model, applied, runner, flops_model)


def batch_indices(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The training examples of ``step``: the next ``batch_size`` of the seed's shuffled order, wrapping around."""
    start = step * batch_size
    return torch.tensor([int(order[(start + k) % len(order)]) for k in range(batch_size)])


#: Contender families that are DropBP with some rate policy.
DROPBP_FAMILIES = ("sensitivity", "schedule", "adaptive", "adaptive-sensitivity")


def study_schedule(kind: str, total: int) -> RateSchedule:
    """A schedule contender's drop-rate schedule over ``total`` steps: a decay to 0 (cosine, linear, steps), or
    ``warmup``: exact backprop for the first quarter, then the asked rate."""
    if kind == "warmup":
        return RateSchedule("constant", total_steps=total, warmup_steps=total // 4)
    return RateSchedule(kind, total_steps=total, end=0.0)
