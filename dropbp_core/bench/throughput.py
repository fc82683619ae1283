"""Throughput benchmark: the unwrapped baseline, DropBP at each drop rate, and everything dropped, timed side by side.

Configurations are interleaved step by step in one process (rounds of A B C ..., rotated each round), so drift on a
shared machine hits each alike; step times are medians over the measured rounds, after warm-up rounds that absorb
compiles. The linear limit for a realised FLOPs-weighted drop fraction q is ``T(1) + (1 - q) * (T(0) - T(1))``.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..allocation import drop_fraction, uniform_rates, validate_drop_rate
from ..engine import DropBP
from ..errors import ConfigError
from ..memory import saved_activation_bytes
from ..presets import METHODS, apply_method, build_model, check_fits
from ..samplers import SAMPLERS, make_sampler
from ..training import training_step
from ..progress import progress_bar

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ThroughputSettings:
    """Everything a throughput run depends on; :meth:`validate` checks it before any work starts."""

    model: str = "tiny"
    method: str = "lora"
    drop_rates: tuple[float, ...] = (0.5, 0.75, 0.875)
    seq_len: int = 512
    batch_size: int = 2
    warmup: int = 2
    steps: int = 20
    sampler: str = "bernoulli"
    pool_size: int = 8
    compile: bool = False
    compile_backend: str | None = None  # dynamo backend for --compile (None: the device backend's default)
    precision: str = "auto"
    seed: int = 0
    memory_masks: int = 8
    lr: float = 1e-5
    model_overrides: dict[str, Any] = field(default_factory=dict)  # preset fields to change (tests, experiments)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        if not self.drop_rates:
            raise ConfigError("--drop-rates needs at least one rate in [0, 1), e.g. 0.5,0.75,0.875.")
        self.drop_rates = tuple(validate_drop_rate(r, "--drop-rates") for r in self.drop_rates)
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}.")
        if self.precision not in ("auto", *PRECISIONS):
            raise ConfigError(f"--precision must be one of auto, {', '.join(PRECISIONS)}, got {self.precision!r}.")
        for name in ("seq_len", "batch_size", "steps", "pool_size", "memory_masks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}.")

    def dtype_for(self, backend: Any) -> torch.dtype:
        """The model dtype for this run on ``backend`` (see :func:`model_dtype`)."""
        return model_dtype(self.precision, backend)


def model_dtype(precision: str, backend: Any) -> torch.dtype:
    """'auto' is bf16 on accelerators and fp32 on the CPU; otherwise the named precision."""
    if precision == "auto":
        return torch.float32 if backend.name == "cpu" else torch.bfloat16
    return PRECISIONS[precision]


def linear_limit(value_all_dropped: float, value_baseline: float, dropped_fraction: float) -> float:
    """What DropBP can at best give at a FLOPs-weighted drop fraction q: linear between the two measured end points."""
    return value_all_dropped + (1.0 - dropped_fraction) * (value_baseline - value_all_dropped)


@dataclass
class _Config:
    label: str
    drop_rate: float | None           # None: the unwrapped baseline
    masks: Callable[[int], Any]       # step -> mask spec for DropBP.begin_step
    times: list[float] = field(default_factory=list)
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
    return configs


def _run_step(config: _Config, step: int, model: torch.nn.Module, dropbp: DropBP, batch: torch.Tensor,
              optimizer: torch.optim.Optimizer, backend: Any, compiled: bool) -> float:
    baseline = config.drop_rate is None
    if baseline and not compiled:
        dropbp.remove()  # eager: the baseline is the model with no hooks at all
    else:
        # compiled: taking hooks off and on would invalidate every cached graph each round, so the baseline keeps
        # them with nothing dropped; hooks that drop nothing trace away, leaving the unwrapped model's graph
        dropbp.attach()
    mask = "none" if baseline else config.masks(step)
    backend.reset_peak_memory()
    backend.synchronize()
    start = time.perf_counter()
    training_step(model, batch, optimizer, None if baseline and not compiled else dropbp, backend, step, mask=mask)
    backend.synchronize()
    elapsed = time.perf_counter() - start
    if config.drop_rate is not None:
        config.used_masks.append(list(dropbp.mask))
    return elapsed


def _saved_bytes(config: _Config, steps: Sequence[int], model: torch.nn.Module, dropbp: DropBP,
                 batch: torch.Tensor) -> tuple[float, float]:
    """Mean saved-activation bytes over the masks of ``steps`` (forward only), and their mean drop fraction."""
    values, fractions = [], []
    for step in steps:
        if config.drop_rate is None:
            dropbp.remove()
        else:
            dropbp.attach()
        with dropbp.forced_mask("none" if config.drop_rate is None else config.masks(step)) as mask:
            fractions.append(drop_fraction(dropbp.flops, mask))
            values.append(saved_activation_bytes(model, batch))
    return statistics.fmean(values), statistics.fmean(fractions)


def run_throughput(settings: ThroughputSettings, backend: Any, *, progress: bool = True) -> dict[str, Any]:
    """Measure every configuration and return the JSON-ready result (see :func:`summarise`)."""
    settings.validate()
    dtype = settings.dtype_for(backend)
    check_fits(settings.model, dtype=dtype, method=settings.method, capacity_bytes=backend.memory_capacity_bytes(),
               **settings.model_overrides)
    model = apply_method(build_model(settings.model, dtype=dtype, device=backend.device, seed=settings.seed,
                                     **settings.model_overrides), settings.method, seed=settings.seed)
    model.train()
    dropbp = DropBP(model, 0.0, seed=settings.seed, seq_len=settings.seq_len, backend=backend)
    vocab = dropbp.shape.vocab or 256
    batch = torch.randint(0, vocab, (settings.batch_size, settings.seq_len),
                          generator=torch.Generator().manual_seed(settings.seed)).to(backend.device)
    configs = _configs(settings, dropbp)
    eager_model = model  # saved-activation bytes are measured on the eager model
    if settings.compile:
        # every configuration's masks (at most K each with pool) plus the unwrapped and all-dropped graphs
        limit = len(configs) * settings.pool_size + 8 if settings.sampler == "pool" else 4096
        model = backend.compile(model, backend=settings.compile_backend, recompile_limit=limit)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    warmup = settings.warmup
    if settings.sampler == "pool" and (settings.compile or getattr(backend, "compiles_per_mask", False)):
        warmup = max(warmup, settings.pool_size)  # steps 0..K-1 replay every pool entry: all graphs compile here
    rounds = warmup + settings.steps
    bar = progress_bar(total=rounds * len(configs), desc="bench throughput", enabled=progress, unit="step")
    for round_index in range(rounds):
        shift = round_index % len(configs)
        for config in configs[shift:] + configs[:shift]:
            before = backend.compile_count() if settings.compile else 0
            elapsed = _run_step(config, round_index, model, dropbp, batch, optimizer, backend, settings.compile)
            compiles = (backend.compile_count() - before) if settings.compile else 0
            if round_index < warmup:
                config.warmup_s += elapsed
                config.compiles_warmup += compiles
                config.used_masks.clear()
            else:
                config.times.append(elapsed)
                config.compiles_measured += compiles
                peak = backend.peak_memory_bytes()
                if peak is not None:
                    config.peaks.append(peak)
            bar.update(1)
            bar.set_postfix(config=config.label, s=f"{elapsed:.3f}")
    bar.close()
    memory_steps = list(range(warmup, warmup + min(settings.memory_masks, settings.steps)))
    saved = {c.label: _saved_bytes(c, memory_steps, eager_model, dropbp, batch) for c in configs}
    dropbp.remove()
    result = summarise(settings, backend, dropbp, configs, saved, dtype)
    result["warmup_rounds"] = warmup
    return result


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
    from .paper import PAPER_THROUGHPUT
    from .results import environment

    compiles_reported = settings.compile or bool(getattr(backend, "compiles_per_mask", False))
    entries = {c.label: _entry(c, settings, saved[c.label], dropbp.flops, compiles_reported) for c in configs}
    baseline, all_dropped = entries.pop("baseline"), entries.pop("all dropped")
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
        "settings": asdict(settings),
        "baseline": baseline,
        "all_dropped": all_dropped,
        "runs": runs,
        "paper_reference": PAPER_THROUGHPUT,
    }
