"""Throughput benchmark: the unwrapped baseline, DropBP at each drop rate, and everything dropped, timed side by side.

Configurations are interleaved step by step in one process (rounds of A B C ..., rotated each round), so drift on a
shared machine hits each alike; step times are medians over the measured rounds, after warm-up rounds that absorb
compiles. The linear limit for a realised FLOPs-weighted drop fraction q is ``T(1) + (1 - q) * (T(0) - T(1))``.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.allocation import drop_fraction, uniform_rates
from dropbp.core.engine import DropBP
from dropbp.core.memory import saved_activation_bytes
from dropbp.core.progress import progress_bar
from dropbp.core.samplers import make_sampler
from dropbp.core.step_flops import StepFlops
from dropbp.recipes.for_benchmarks import (COMPILE_BACKEND, IGNORE, NON_NEGATIVE, POSITIVE, Naming, Problems,
                                           StepRunner, apply_method, batch_size_field, build_model, causal_lm_loss,
                                           check_fits, check_int, check_seq_len, head_fraction,
                                           labelled_positions_loss, lr_field, model_overrides_field, option_name,
                                           pool_size_field, resolve_sampler, sampler_field, seq_len_field,
                                           set_checkpointing, setting, steps_field)

from .harness import ModelBenchSettings, run_benchmark

#: Label prefix of the configurations timed with activation checkpointing on.
CHECKPOINTED = "checkpointing "


@dataclass
class ThroughputSettings(ModelBenchSettings):
    """Everything a throughput run depends on; :meth:`validate` checks it before any work starts."""

    seq_len: int = seq_len_field(512, "tokens per sequence")
    batch_size: int = batch_size_field(2)
    warmup: int = setting(2, "warm-up rounds, not timed (at least the pool size when graphs compile per mask)",
                          allowed=NON_NEGATIVE)
    steps: int = steps_field(20, "measured rounds")
    sampler: str = sampler_field()
    pool_size: int = pool_size_field()
    compile: bool = setting(False, "torch.compile the model and report graph compiles")
    checkpointing: bool = setting(False, "also time activation checkpointing alone and with DropBP at each rate "
                                         "(non-reentrant; eager only)")
    compile_backend: str | None = setting(None, "dynamo backend for --compile (default: the device backend's own)",
                                          allowed=COMPILE_BACKEND)
    memory_masks: int = setting(8, "masks whose saved-activation bytes are measured (forward passes, not timed)",
                                allowed=POSITIVE)
    lr: float = lr_field(1e-5, "AdamW learning rate of the timed steps")
    answer_tokens: int | None = setting(None, "label only the last N tokens of each sequence (a short-answer "
                                              "workload, its prompt masked); none: every token is labelled",
                                        allowed="integer in 1..seq_len-1, or none")
    head_positions: str = setting("all", "where the LM head and the loss run: all positions, or labelled ones only "
                                         "(the same loss and gradients)", choices=("all", "labelled"))
    model_overrides: dict[str, Any] = model_overrides_field("preset fields to change (tests, experiments)")

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        if self.answer_tokens is not None:
            high = self.seq_len - 1 if isinstance(self.seq_len, int) and self.seq_len > 1 else None
            p.check(check_int, name("answer_tokens"), self.answer_tokens, 1, high)
        if self.checkpointing and self.compile:
            p.add(f"{name('checkpointing')} times eager steps; it cannot be combined with {name('compile')}.")
        if self.model != "auto" and not p.items:
            p.check(check_seq_len, self.model, self.seq_len, name("seq_len"), **self.model_overrides)

    def resolve(self, backend: type[Backend]) -> "ThroughputSettings":
        """``auto`` model, sampler and precision as they are on ``backend``."""
        return replace(super().resolve(backend), sampler=resolve_sampler(self.sampler, backend))

    def dtypes_for(self, backend: Backend | type[Backend]) -> tuple[torch.dtype, torch.dtype | None]:
        """(weight dtype, autocast dtype or None) of this run's precision on ``backend``."""
        return backend.precision_dtypes(self.precision)


def answer_labels(ids: torch.Tensor, answer_tokens: int | None) -> torch.Tensor:
    """Labels of a timed batch: the ids themselves, or only the last ``answer_tokens`` of each sequence (the rest
    left out of the loss, as a masked prompt is)."""
    if answer_tokens is None:
        return ids
    labels = torch.full_like(ids, IGNORE)
    labels[:, -answer_tokens:] = ids[:, -answer_tokens:]
    return labels


def linear_limit(value_all_dropped: float, value_baseline: float, dropped_fraction: float) -> float:
    """What DropBP can at best give at a FLOPs-weighted drop fraction q: linear between the two measured end points."""
    return value_all_dropped + (1.0 - dropped_fraction) * (value_baseline - value_all_dropped)


@dataclass
class _Config:
    label: str
    drop_rate: float | None           # None: the unwrapped baseline
    masks: Callable[[int], Any]       # step -> mask spec for DropBP.begin_step
    checkpointing: bool = False       # activation checkpointing on for this configuration
    times: list[float] = field(default_factory=list)
    phases: list[tuple[float, float, float]] = field(default_factory=list)  # (forward, backward, optimizer) s
    peaks: list[int] = field(default_factory=list)
    used_masks: list[list[bool]] = field(default_factory=list)
    warmup_s: float = 0.0
    compiles_warmup: int = 0
    compiles_measured: int = 0


def _configs(settings: ThroughputSettings, dropbp: DropBP) -> list[_Config]:
    configs = [_Config("baseline", None, lambda step: None)]
    for rate in sorted({0.0, *settings.drop_rates}):
        sampler = make_sampler(settings.sampler, uniform_rates(len(dropbp.branches), rate), dropbp.flops,
                               settings.seed, settings.pool_size)
        configs.append(_Config(f"dropbp p={rate:g}", rate, lambda step, s=sampler: s.mask(step).tolist()))
    configs.append(_Config("all dropped", 1.0, lambda step: "all"))
    if settings.checkpointing:
        configs += [_Config(CHECKPOINTED + c.label.replace("baseline", "alone"), c.drop_rate, c.masks, True)
                    for c in configs if c.label != "all dropped" and c.drop_rate != 0.0]
    return configs


def _run_step(config: _Config, step: int, runners: dict[bool, StepRunner], dropbp: DropBP, batch: Any,
              backend: Any, compiled: bool) -> tuple[float, float, float]:
    """One timed training step; returns its (forward, backward, optimizer) seconds, the device synchronised
    between phases so each phase's queued work is counted in it."""
    baseline = config.drop_rate is None
    set_checkpointing(runners[False].model, config.checkpointing)
    if baseline and not compiled:
        dropbp.remove()  # eager: the baseline is the model with no hooks at all
    else:
        # compiled: taking hooks off and on would invalidate every cached graph each round, so the baseline keeps
        # them with nothing dropped; hooks that drop nothing trace away, leaving the unwrapped model's graph
        dropbp.attach()
    with_engine = not (baseline and not compiled)
    backend.reset_peak_memory()
    result = runners[with_engine].step(step, [batch], mask=("none" if baseline else config.masks(step))
                                       if with_engine else None)
    if config.drop_rate is not None:
        config.used_masks.append(list(dropbp.mask))
    assert result.phases is not None
    return result.phases


def _saved_bytes(config: _Config, steps: Sequence[int], model: torch.nn.Module, dropbp: DropBP,
                 batch: torch.Tensor) -> tuple[float, float]:
    """Mean saved-activation bytes over the masks of ``steps`` (forward only), and their mean drop fraction."""
    values, fractions = [], []
    set_checkpointing(model, config.checkpointing)
    for step in steps:
        if config.drop_rate is None:
            dropbp.remove()
        else:
            dropbp.attach()
        with dropbp.forced_mask("none" if config.drop_rate is None else config.masks(step)) as mask:
            fractions.append(drop_fraction(dropbp.flops, mask))
            values.append(saved_activation_bytes(model, batch))
    return statistics.fmean(values), statistics.fmean(fractions)


def run_throughput(settings: ThroughputSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Measure every configuration on ``backend`` and return the JSON-ready result (see :func:`summarise`);
    nothing is written. :func:`main` also publishes it."""
    settings = settings.resolve(type(backend))
    settings.validate()
    if settings.compile:
        backend.check_compile_backend(settings.compile_backend or backend.compile_backend)
    dtype, autocast = settings.dtypes_for(backend)
    check_fits(settings.model, dtype=dtype, method=settings.method, capacity_bytes=backend.memory_capacity_bytes(),
               **settings.model_overrides)
    model = apply_method(build_model(settings.model, dtype=dtype, device=backend.device, seed=settings.seed,
                                     **settings.model_overrides), settings.method, seed=settings.seed)
    model.train()
    dropbp = DropBP(model, 0.0, seed=settings.seed, seq_len=settings.seq_len)
    vocab = dropbp.shape.vocab or 256
    ids = torch.randint(0, vocab, (settings.batch_size, settings.seq_len),
                        generator=torch.Generator().manual_seed(settings.seed)).to(backend.device)
    batch = (ids, answer_labels(ids, settings.answer_tokens))
    configs = _configs(settings, dropbp)
    eager_model = model  # saved-activation bytes are measured on the eager model
    if settings.compile:
        # every configuration's masks (at most K each with pool) plus the unwrapped and all-dropped graphs
        limit = len(configs) * settings.pool_size + 8 if settings.sampler == "pool" else 4096
        model = backend.compile(model, backend=settings.compile_backend, recompile_limit=limit)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    loss_fn = labelled_positions_loss if settings.head_positions == "labelled" else causal_lm_loss
    runners = {with_engine: StepRunner(model, backend, optimizer, dropbp if with_engine else None, autocast,
                                       loss_fn=loss_fn, timed=True) for with_engine in (False, True)}
    warmup = settings.warmup
    if settings.sampler == "pool" and (settings.compile or backend.compiles_per_mask):
        warmup = max(warmup, settings.pool_size)  # steps 0..K-1 replay every pool entry: all graphs compile here
    rounds = warmup + settings.steps
    bar = progress_bar(total=rounds * len(configs), desc="bench throughput", enabled=progress, unit="step")
    for round_index in range(rounds):
        shift = round_index % len(configs)
        for config in configs[shift:] + configs[:shift]:
            before = backend.compile_count() if settings.compile else 0
            phases = _run_step(config, round_index, runners, dropbp, batch, backend, settings.compile)
            elapsed = sum(phases)
            compiles = (backend.compile_count() - before) if settings.compile else 0
            if round_index < warmup:
                config.warmup_s += elapsed
                config.compiles_warmup += compiles
                config.used_masks.clear()
            else:
                config.times.append(elapsed)
                config.phases.append(phases)
                config.compiles_measured += compiles
                peak = backend.peak_memory_bytes()
                if peak is not None:
                    config.peaks.append(peak)
            bar.update(1)
            bar.set_postfix(config=config.label, s=f"{elapsed:.3f}")
    bar.close()
    memory_steps = list(range(warmup, warmup + min(settings.memory_masks, settings.steps)))
    saved = {c.label: _saved_bytes(c, memory_steps, eager_model, dropbp, ids) for c in configs}
    dropbp.remove()
    result = summarise(settings, backend, dropbp, configs, saved, dtype)
    result["warmup_rounds"] = warmup
    result["head"] = head_shares(eager_model, settings, head_fraction(loss_fn, batch[1]), result)
    return result


def head_shares(model: torch.nn.Module, settings: ThroughputSettings, fraction: float,
                result: dict[str, Any]) -> dict[str, Any]:
    """The share of a step's training FLOPs the LM head and the loss take (DropBP cannot drop it), at the baseline
    and at each run's realised drop fraction, with the head on ``fraction`` of the positions."""
    flops = StepFlops(model, settings.seq_len, 2.0 if settings.method == "full" else 1.0, fraction)
    rates = {r["label"]: r["realized_drop_fraction"] for r in result["runs"]}
    return {"positions": settings.head_positions, "fraction_of_positions": fraction,
            "share_baseline": flops.head_share(),
            "share_at": {label: flops.head_share(no_backward=[q] * len(flops.flops)) for label, q in rates.items()}}


def _entry(config: _Config, settings: ThroughputSettings, saved: tuple[float, float], flops: list[int],
           compiles_reported: bool) -> dict[str, Any]:
    step_time = statistics.median(config.times)
    tokens = settings.batch_size * settings.seq_len
    if config.drop_rate is None:
        realised = 0.0
    else:
        per_branch = torch.tensor(config.used_masks, dtype=torch.float64).mean(0).tolist()
        realised = drop_fraction(flops, per_branch)
    return {
        "label": config.label,
        "drop_rate": config.drop_rate,
        "realized_drop_fraction": realised,
        "step_time_s": step_time,
        "step_times_s": config.times,
        # phases as means: with drop masks a phase's time is bimodal (e.g. no backward at all when a LoRA step keeps
        # nothing), and means add up to the mean step, as a per-iteration timing table should
        "forward_s": statistics.fmean(p[0] for p in config.phases),
        "backward_s": statistics.fmean(p[1] for p in config.phases),
        "optimizer_s": statistics.fmean(p[2] for p in config.phases),
        "step_time_mean_s": statistics.fmean(config.times),
        "tokens_per_s": tokens / step_time,
        "warmup_time_s": config.warmup_s,
        "saved_activation_bytes": int(round(saved[0])),
        "saved_activation_drop_fraction": saved[1],
        "peak_mem_bytes": int(statistics.median(config.peaks)) if config.peaks else None,
        "graph_compiles": config.compiles_measured if compiles_reported else None,
        "graph_compiles_warmup": config.compiles_warmup if compiles_reported else None,
    }


def summarise(settings: ThroughputSettings, backend: Any, dropbp: DropBP, configs: list[_Config],
              saved: dict[str, tuple[float, float]], dtype: torch.dtype) -> dict[str, Any]:
    """Turn raw timings into the result document: medians, increases, linear limits and efficiencies."""
    from dropbp.benchmarks.paper import PAPER_THROUGHPUT
    from dropbp.recipes.for_benchmarks import environment

    compiles_reported = settings.compile or backend.compiles_per_mask
    entries = {c.label: _entry(c, settings, saved[c.label], dropbp.flops, compiles_reported) for c in configs}
    baseline, all_dropped = entries.pop("baseline"), entries.pop("all dropped")
    checkpointed = [{**entry, "throughput_increase": baseline["step_time_s"] / entry["step_time_s"] - 1.0,
                     "saved_activation_vs_baseline": entry["saved_activation_bytes"] / baseline["saved_activation_bytes"]}
                    for label, entry in list(entries.items()) if label.startswith(CHECKPOINTED) and entries.pop(label)]
    runs = []
    for entry in entries.values():
        q = entry["realized_drop_fraction"]
        ideal = linear_limit(all_dropped["step_time_s"], baseline["step_time_s"], q)
        ideal_saved = linear_limit(all_dropped["saved_activation_bytes"], baseline["saved_activation_bytes"],
                                   entry["saved_activation_drop_fraction"])
        runs.append({
            **entry,
            "throughput_increase": baseline["step_time_s"] / entry["step_time_s"] - 1.0,
            "ideal_step_time_s": ideal,
            "efficiency": ideal / entry["step_time_s"],
            "ideal_throughput_increase": baseline["step_time_s"] / ideal - 1.0,
            "saved_activation_ideal_bytes": ideal_saved,
            "saved_activation_vs_ideal": (entry["saved_activation_bytes"] / ideal_saved) if ideal_saved else None,
        })
    runs.sort(key=lambda r: r["drop_rate"])
    return {
        "benchmark": "throughput",
        **environment(backend),
        "model": settings.model,
        "model_shape": dropbp.shape.to_dict(),
        "num_branches": len(dropbp.branches),
        "method": settings.method,
        "dtype": str(dtype).replace("torch.", ""),
        "seq_len": settings.seq_len,
        "batch_size": settings.batch_size,
        "sampler": settings.sampler,
        "settings": settings.to_dict(),
        "baseline": baseline,
        "all_dropped": all_dropped,
        "runs": runs,
        "checkpointed": checkpointed,
        "paper_reference": PAPER_THROUGHPUT,
    }


def main(settings: ThroughputSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench throughput``: validate, measure, write ``throughput.{json,md,png}``, print the table."""
    from .throughput_report import throughput_figure, throughput_markdown

    return run_benchmark("throughput", settings, run_throughput, throughput_markdown, throughput_figure,
                         progress=progress)
