"""The probe's measurements on a model: for each candidate DropBP setting, what a forward+backward costs against
exact backprop's, and how well its gradient points where *another* batch's exact gradient points.

Rounds are interleaved (round ``r``: the exact gradient of batch ``r``, then each candidate's gradients of the same
batch under ``masks`` masks), so load on the machine falls on every configuration alike. Comparing with another
batch's exact gradient (the previous round's), not this batch's, measures the part of a step that generalises: the
batch's own noise is in the denominator too (exact backprop's agreement with that batch), so what remains is what
DropBP adds.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dropbp.backends import Backend
from dropbp.core.allocation import allocate, depth_sensitivity, drop_fraction, uniform_rates
from dropbp.core.engine import DropBP
from dropbp.core.samplers import make_sampler
from dropbp.core.sensitivity import compute_sensitivity
from dropbp.core.step_flops import StepFlops

from ..gradient_agreement import cosine
from ..harness import step_clock
from ..recipe_target import LossFn

#: How a candidate's per-branch rates are allocated: uniform, by depth (lower branches drop more), or by measured
#: sensitivity (one fast pass, the optimal allocator).
ALLOCATIONS = ("uniform", "depth", "sensitivity")


@dataclass(frozen=True)
class Candidate:
    """A DropBP setting the probe measures: a drop rate and how it is allocated over the branches."""

    drop_rate: float
    allocation: str

    @property
    def label(self) -> str:
        return f"{self.allocation} p={self.drop_rate:g}"

    def recipe_keys(self) -> list[str]:
        """The recipe keys that train with this setting (``dropbp train RECIPE KEY=VALUE ...``)."""
        keys = [f"dropbp.drop_rate={self.drop_rate:g}", f"dropbp.allocation={self.allocation}"]
        return keys + (["dropbp.allocator=optimal"] if self.allocation != "uniform" else [])


@dataclass
class Measured:
    """One configuration's measurements over the rounds: pass times, and per round the mean cosine of its masks'
    gradients with another batch's exact gradient (``next_cos``), the cosine of their mean (``mean_next_cos``) and
    the mean cosine with this batch's exact gradient (``same_cos``)."""

    label: str
    drop_fraction: float
    flops_ratio: float | None = None
    seconds: list[float] = field(default_factory=list)
    next_cos: list[float] = field(default_factory=list)
    mean_next_cos: list[float] = field(default_factory=list)
    same_cos: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "drop_fraction": self.drop_fraction, "flops_ratio": self.flops_ratio,
                "seconds": self.seconds,
                "next_cos": self.next_cos, "mean_next_cos": self.mean_next_cos, "same_cos": self.same_cos,
                "median_seconds": statistics.median(self.seconds) if self.seconds else None}


class GradientProbe:
    """Flat gradients of a model's trainable parameters on a batch, each forward+backward timed by the step clock
    (the device synchronised around it), with one DropBP engine whose mask is forced per pass."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, backend: Backend, *, seq_len: int, seed: int = 0) -> None:
        if DropBP.of(model) is not None:
            raise ValueError("the probe puts its own engine on the model: remove the model's engine first.")
        self.model, self.loss_fn, self.backend, self.seed = model.train(), loss_fn, backend, seed
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.engine = DropBP(model, 0.0, seed=seed, seq_len=seq_len)
        self.clock = step_clock(backend)[0]

    def gradient(self, batch: Any, mask: Sequence[bool] | None) -> tuple[torch.Tensor, float]:
        """The flat gradient on ``batch`` with ``mask`` forced (None: exact backprop, the engine's hooks off, as
        DropBP off trains) and the seconds its forward+backward took."""
        if mask is None:
            self.engine.remove()
        self.model.zero_grad(set_to_none=True)
        self.backend.synchronize()
        start = self.clock()
        try:
            if mask is None:
                loss = self.loss_fn(self.model, batch)
                loss.backward()
            else:
                with self.engine.forced_mask(list(mask)):
                    loss = self.loss_fn(self.model, batch)
                    if loss.requires_grad:
                        loss.backward()
            self.backend.synchronize()
            seconds = self.clock() - start
        finally:
            if mask is None:
                self.engine.attach()
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten()
                          for p in self.params])
        self.model.zero_grad(set_to_none=True)
        return flat, seconds

    def rates(self, candidate: Candidate, batch: Any) -> list[float]:
        """``candidate``'s per-branch rates on this model (sensitivity measured on ``batch``, token ids or the
        model's inputs with the labels the run trains on, by one fast pass)."""
        engine = self.engine
        if candidate.allocation == "uniform":
            return uniform_rates(len(engine.branches), candidate.drop_rate)
        if candidate.allocation == "depth":
            values = depth_sensitivity([b.layer for b in engine.branches])
        else:
            values = compute_sensitivity("fast", self.model, engine, batch, seed=self.seed).values
        return allocate("optimal", engine.flops, values, candidate.drop_rate)

    def close(self) -> None:
        """Take the probe's engine off the model (gradients cleared)."""
        self.engine.remove()
        self.model.zero_grad(set_to_none=True)


def measure_candidates(probe: GradientProbe, candidates: Sequence[Candidate], batch: Callable[[int], Any], *,
                       rounds: int, masks: int, first: int = 0, model_inputs: Callable[[Any], Any] = lambda b: b,
                       flops_model: StepFlops | None = None,
                       tick: Callable[[], None] | None = None) -> tuple[Measured, list[Measured]]:
    """Exact backprop and every candidate over ``rounds`` interleaved rounds on batches ``first``, ``first + 1``,
    ...: times, and agreement with another batch's exact gradient (the previous round's; for round 0 batch
    ``first + rounds``, computed first and untimed). Four gradients at most are held at a time.
    Sensitivities are measured on ``model_inputs(batch(first))``; with ``flops_model`` each candidate's expected
    step FLOPs over exact backprop's are kept too; ``tick`` is called after every pass."""
    rates = {c: probe.rates(c, model_inputs(batch(first))) for c in candidates}
    flops = probe.engine.flops
    samplers = {c: make_sampler("bernoulli", rates[c], flops, probe.seed + 1 + i, 1)
                for i, c in enumerate(candidates)}
    exact = Measured("exact backprop", 0.0, 1.0 if flops_model is not None else None)
    names = [b.name for b in probe.engine.branches]

    def flops_ratio(candidate: Candidate) -> float | None:
        if flops_model is None:
            return None
        by_name = dict(zip(names, rates[candidate]))
        return flops_model.step(1, no_backward=[by_name.get(n, 0.0) for n in flops_model.names]) / flops_model.step(1)

    measured = {c: Measured(c.label, drop_fraction(flops, rates[c]), flops_ratio(c)) for c in candidates}
    other, _ = probe.gradient(batch(first + rounds), None)  # the batch round 0 is compared with
    for r in range(rounds):
        grad, seconds = probe.gradient(batch(first + r), None)
        exact.seconds.append(seconds)
        exact.next_cos.append(cosine(grad, other))
        exact.mean_next_cos.append(exact.next_cos[-1])
        exact.same_cos.append(1.0)
        if tick:
            tick()
        for c in candidates:
            total, next_cos, same_cos = torch.zeros_like(grad), [], []
            for k in range(masks):
                g, seconds = probe.gradient(batch(first + r), samplers[c].mask(r * masks + k).tolist())
                measured[c].seconds.append(seconds)
                next_cos.append(cosine(g, other))
                same_cos.append(cosine(g, grad))
                total += g
                if tick:
                    tick()
            measured[c].next_cos.append(statistics.fmean(next_cos))
            measured[c].mean_next_cos.append(cosine(total / masks, other))
            measured[c].same_cos.append(statistics.fmean(same_cos))
        other = grad  # the next round is compared with this one's batch
    return exact, [measured[c] for c in candidates]
