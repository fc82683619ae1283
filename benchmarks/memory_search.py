"""Memory benchmark: for each drop rate, the longest sequence whose training step fits a memory budget.

On CUDA/HPU the budget is the device's memory and a probe is a real training step (an out-of-memory error means
"does not fit" and is recovered from). On the CPU the budget is ``--budget-gb`` of weights (with gradients and
optimizer state for trainable ones) plus the activations saved for backward, measured with saved-tensor hooks.
DropBP's peak is set by the step that drops least, so the search uses the ``pool`` sampler and a length fits only
if the worst entry of the pool fits (with ``bernoulli`` the worst step drops nothing: no gain in peak memory).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.allocation import uniform_rates
from dropbp.core.branches import find_blocks
from dropbp.core.engine import DropBP
from dropbp.core.errors import ConfigError
from dropbp.core.memory import captured_block_inputs, rerun_saved_bytes, saved_activation_bytes
from dropbp.core.memory_model import MemoryModel
from dropbp.core.progress import progress_bar
from dropbp.core.samplers import PoolSampler
from dropbp.recipes.for_benchmarks import (DEFAULT_LORA_RANK, POSITIVE, POSITIVE_NUMBER, apply_method,
                                           batch_size_field, build_model, check_fits, environment, markdown_table,
                                           mib, Naming, option_name, pool_size_field, Problems, pyplot,
                                           set_checkpointing, setting, StepRunner)

from .harness import ModelBenchSettings, run_benchmark
from .paper import PAPER_MEMORY

GRANULARITY = 64
DEFAULT_CPU_BUDGET_GB = 1.0


@dataclass
class MemorySettings(ModelBenchSettings):
    """What a memory search depends on; :meth:`validate` checks it before any work starts."""

    budget_gb: float | None = setting(None, f"CPU only: budget in GiB for weights + saved activations (default: "
                                            f"{DEFAULT_CPU_BUDGET_GB:g})",
                                      allowed=POSITIVE_NUMBER.described("finite number > 0 (CPU only; on a device the "
                                                                        "budget is its memory)"))
    batch_size: int = batch_size_field(1)
    max_seq_len: int = setting(65536, "upper end of the search", allowed=POSITIVE)
    pool_size: int = pool_size_field()
    checkpointing: bool = setting(False, "also search activation checkpointing alone and with DropBP at each rate "
                                         "(non-reentrant; on the CPU its peak adds one block's recomputation)")

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)


def state_bytes(model: torch.nn.Module) -> int:
    """Weights, plus gradient and two AdamW moments for every trainable weight."""
    total = 0
    for param in model.parameters():
        size = param.numel() * param.element_size()
        total += 4 * size if param.requires_grad else size
    return total


def longest_fitting(fits: Callable[[int], bool], upper: int, start: int = 256, on_probe=None,
                    guess: int | None = None) -> int:
    """Largest multiple of ``GRANULARITY`` up to ``upper`` for which ``fits`` holds (0 if none). Without ``guess``,
    by doubling from ``start`` and then bisecting; with one (e.g. the memory model's answer), by stepping out from
    it until the answer is bracketed, then bisecting, which spends fewer of the probes at long lengths, the costly
    ones. ``fits`` must be monotone (longer never fits where shorter does not); both ways give the same answer."""
    def probe(length: int) -> bool:
        if on_probe:
            on_probe(length)
        return fits(length)

    lo, hi = 0, None
    if guess is None:
        length = min(start, upper)
        while hi is None:
            if probe(length):
                lo = length
                if length >= upper:
                    return lo
                length = min(length * 2, upper)
            else:
                hi = length
    else:
        step = max(GRANULARITY, guess // 16 // GRANULARITY * GRANULARITY)
        length = min(max(guess // GRANULARITY * GRANULARITY, GRANULARITY), upper)
        if probe(length):
            lo = length
            while hi is None:
                if lo >= upper:
                    return lo
                length, step = min(lo + step, upper), step * 2
                if probe(length):
                    lo = length
                else:
                    hi = length
        else:
            hi = length
            while (length := (hi - step) // GRANULARITY * GRANULARITY) >= GRANULARITY:
                step *= 2
                if probe(length):
                    lo = length
                    break
                hi = length
    while hi - lo > GRANULARITY:
        mid = (lo + hi) // 2 // GRANULARITY * GRANULARITY
        if mid <= lo:
            break
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo


class _Prober:
    """Answers "does a step at this length fit?" for one drop rate (None: the unwrapped baseline)."""

    def __init__(self, model, dropbp: DropBP, backend, rate: float | None, budget: int | None, pool_size: int,
                 seed: int, vocab: int, predictor: MemoryModel, autocast: torch.dtype | None = None,
                 checkpointing: bool = False) -> None:
        self.model, self.dropbp, self.backend, self.rate, self.budget = model, dropbp, backend, rate, budget
        self.predictor, self.checkpointing = predictor, checkpointing
        self.blocks = [module for _, module in find_blocks(model)]
        self.vocab, self.seed = vocab, seed
        self.masks: list[list[bool]] = [[False] * len(dropbp.branches)]
        if rate is not None and rate > 0:
            pool = PoolSampler(uniform_rates(len(dropbp.branches), rate), dropbp.flops, seed, pool_size)
            self.masks = [row.tolist() for row in pool.pool]
        self.worst: int | None = None  # index of the pool entry that saves the most (see choose_worst)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        self.runner = StepRunner(model, backend, self.optimizer, None if rate is None else dropbp, autocast)
        self.probes: list[dict[str, Any]] = []

    def _batch(self, seq_len: int, batch_size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, self.vocab, (batch_size, seq_len), generator=generator).to(self.backend.device)

    def _wrap(self) -> None:
        if self.rate is None:
            self.dropbp.remove()  # the baseline is the unwrapped model
        else:
            self.dropbp.attach()

    def _recomputed_blocks(self, mask: list[bool]) -> list[torch.nn.Module]:
        """For each distinct set of branches ``mask`` keeps in a block, the deepest block that keeps it: blocks
        alike in what they keep save alike, so measuring these bounds the largest recomputation."""
        layers = sorted({branch.layer for branch in self.dropbp.branches})
        deepest: dict[tuple[bool, ...], torch.nn.Module] = {}
        for layer, block in zip(layers, self.blocks):
            deepest[tuple(drop for drop, branch in zip(mask, self.dropbp.branches) if branch.layer == layer)] = block
        return list(deepest.values())

    def _saved(self, mask: list[bool], batch: torch.Tensor) -> tuple[int, int]:
        """Saved-activation bytes of a forward under ``mask``, and with checkpointing the largest block's
        recomputation (what that block saves run again without checkpointing), held during its backward."""
        self._wrap()
        with self.dropbp.forced_mask(mask):
            if not self.checkpointing:
                return saved_activation_bytes(self.model, batch), 0
            blocks = self._recomputed_blocks(mask)
            set_checkpointing(self.model, True)
            try:
                with captured_block_inputs(blocks) as inputs:
                    saved = saved_activation_bytes(self.model, batch)
            finally:
                set_checkpointing(self.model, False)
            return saved, max(rerun_saved_bytes(self.model, blocks[i], *inputs[i]) for i in inputs)

    def choose_worst(self, batch_size: int, seq_len: int = 256) -> None:
        """Find the pool entry that saves the most, at a short length (cheap; saved bytes grow with the length
        alike for every entry). Only the CPU's counted budget uses it: a device probe runs every entry."""
        batch = self._batch(seq_len, batch_size)
        saved = [sum(self._saved(mask, batch)) for mask in self.masks]
        self.worst = max(range(len(saved)), key=saved.__getitem__)

    def _predicted(self, mask: list[bool], batch_size: int, seq_len: int) -> float:
        return (self.predictor.saved_bytes(mask, batch_size, seq_len)
                + self.predictor.recompute_peak_per_token(mask) * batch_size * seq_len)

    def _device_step(self, mask: list[bool], batch: torch.Tensor) -> tuple[bool, int | None]:
        self._wrap()
        set_checkpointing(self.model, self.checkpointing)
        self.backend.reset_peak_memory()
        try:
            self.runner.step(0, [batch], mask=None if self.rate is None else mask)
            return True, self.backend.peak_memory_bytes()
        except Exception as error:  # noqa: BLE001 - only out-of-memory is expected; anything else is re-raised
            if not self.backend.is_out_of_memory(error):
                raise
            return False, None
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.backend.empty_cache()

    def fits(self, seq_len: int, batch_size: int, state: int) -> bool:
        batch = self._batch(seq_len, batch_size)
        if self.budget is None:  # device memory: a real step must not run out of memory
            results = [self._device_step(mask, batch) for mask in self.masks]
            ok = all(r[0] for r in results)
            self.probes.append({"seq_len": seq_len, "fits": ok, "peak_mem_bytes": max(
                (r[1] for r in results if r[1] is not None), default=None)})
            return ok
        if self.worst is None:
            self.choose_worst(batch_size)
        saved = self._saved(self.masks[self.worst], batch)
        used = state + sum(saved)
        predicted = self._predicted(self.masks[self.worst], batch_size, seq_len)
        self.probes.append({"seq_len": seq_len, "fits": used <= self.budget, "bytes": used,
                            "saved_bytes": sum(saved), "recompute_bytes": saved[1],
                            "predicted_saved_bytes": predicted})
        return used <= self.budget

    def predicted_longest(self, budget: int, state: int, batch_size: int, upper: int) -> int:
        """The memory model's longest fitting length (same granularity), for the mask the search used."""
        mask = self.masks[self.worst if self.worst is not None else 0]
        return longest_fitting(lambda s: state + self._predicted(mask, batch_size, s) <= budget, upper)


def run_memory(settings: MemorySettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Search every drop rate (and the baseline) on ``backend`` and return the JSON-ready result; nothing is
    written. :func:`main` also publishes it."""
    settings = settings.resolve(type(backend))
    settings.validate()
    rates = list(settings.drop_rates)
    if not backend.accelerator:  # no device memory to run out of: the budget is a number of bytes
        budget: int | None = int((settings.budget_gb or DEFAULT_CPU_BUDGET_GB) * 2**30)
    else:
        if settings.budget_gb is not None:
            raise ConfigError("--budget-gb applies to the CPU only; on a device the budget is its memory.")
        budget = None
    dtype, autocast = backend.precision_dtypes(settings.precision)
    check_fits(settings.model, dtype=dtype, method=settings.method, capacity_bytes=backend.memory_capacity_bytes())
    model = apply_method(build_model(settings.model, dtype=dtype, device=backend.device, seed=settings.seed),
                         settings.method, seed=settings.seed).train()
    dropbp = DropBP(model, 0.0, seed=settings.seed)
    width = torch.finfo(dtype).bits // 8
    act_width = torch.finfo(autocast or dtype).bits // 8  # activations are in the autocast dtype
    predictors = {checkpointing: MemoryModel.from_shape(
        dropbp.shape, lora_rank=DEFAULT_LORA_RANK if settings.method != "full" else 0, act_bytes=act_width,
        weight_bytes=width, checkpointing=checkpointing) for checkpointing in (False, True)}
    predictor = predictors[False]
    state = state_bytes(model)
    if budget is not None and state >= budget:
        raise ConfigError(f"--budget-gb {budget / 2**30:g} is smaller than the model's weights and optimizer state "
                          f"({state / 2**30:.3f} GiB); raise it.")
    entries = []
    contenders = [(rate, False) for rate in [None, *rates]]
    contenders += [(rate, True) for rate in [None, *rates]] if settings.checkpointing else []
    bar = progress_bar(total=len(contenders), desc="bench memory", enabled=progress)
    for rate, checkpointing in contenders:
        prober = _Prober(model, dropbp, backend, rate, budget, settings.pool_size, settings.seed,
                         dropbp.shape.vocab or 256, predictors[checkpointing], autocast, checkpointing)
        guess = None
        if budget is not None:  # start the search at the memory model's answer, for the mask that saves the most
            prober.choose_worst(settings.batch_size)
            guess = prober.predicted_longest(budget, state, settings.batch_size, settings.max_seq_len)
        best = longest_fitting(lambda s: prober.fits(s, settings.batch_size, state), settings.max_seq_len,
                               on_probe=lambda s: bar.set_postfix(rate=rate, seq=s), guess=guess or None)
        label = "baseline" if rate is None else f"dropbp p={rate:g}"
        if checkpointing:
            label = "checkpointing alone" if rate is None else f"checkpointing + {label}"
        entry = {"label": label, "drop_rate": rate, "checkpointing": checkpointing, "max_seq_len": best,
                 "probes": prober.probes}
        if budget is not None:
            entry["predicted_max_seq_len"] = prober.predicted_longest(budget, state, settings.batch_size,
                                                                      settings.max_seq_len)
            errors = [abs(p["predicted_saved_bytes"] / p["saved_bytes"] - 1) for p in prober.probes if p["saved_bytes"]]
            entry["prediction_max_error"] = max(errors) if errors else None
        entries.append(entry)
        bar.update(1)
    bar.close()
    dropbp.remove()
    base = entries[0]["max_seq_len"]
    for entry in entries:
        entry["ratio_vs_baseline"] = entry["max_seq_len"] / base if base else None
        entry["hit_search_limit"] = entry["max_seq_len"] >= settings.max_seq_len
    return {"benchmark": "memory", **environment(backend), "model": settings.model, "method": settings.method,
            "model_shape": dropbp.shape.to_dict(), "dtype": str(dtype).replace("torch.", ""),
            "batch_size": settings.batch_size, "sampler": "pool", "pool_size": settings.pool_size,
            "settings": settings.to_dict(),
            "budget_bytes": budget, "budget_source": "--budget-gb" if budget else "device memory",
            "state_bytes": state, "predicted_state_bytes": predictor.state_bytes(), "granularity": GRANULARITY,
            "max_seq_len_searched": settings.max_seq_len,
            "results": entries, "paper_reference": PAPER_MEMORY}


def checkpointing_advice(entries: list[dict[str, Any]]) -> str:
    """With checkpointing searched: how far checkpointing alone reaches against DropBP alone at its highest rate
    and both together (empty otherwise)."""
    alone = next((e for e in entries if e.get("checkpointing") and e["drop_rate"] is None), None)
    dropbp = [e for e in entries if not e.get("checkpointing") and e["drop_rate"] is not None]
    both = [e for e in entries if e.get("checkpointing") and e["drop_rate"] is not None]
    if alone is None or not dropbp or not both:
        return ""
    top, top_both = dropbp[-1], both[-1]
    return (f"\n\nIn this budget checkpointing alone reaches {alone['max_seq_len']} tokens, {top['label']} "
            f"{top['max_seq_len']}, and both together ({top_both['label']}) {top_both['max_seq_len']}. On the CPU a "
            "checkpointed step counts the saved block inputs plus the largest block's recomputation (what that "
            "block saves without checkpointing), which its backward holds for a moment.")


def memory_markdown(result: dict[str, Any]) -> str:
    """Table of the longest sequence per drop rate."""
    budget = result["budget_bytes"]
    base_predicted = result["results"][0].get("predicted_max_seq_len")
    rows = [(e["label"], e["max_seq_len"], None if e["ratio_vs_baseline"] is None else f"{e['ratio_vs_baseline']:.2f}x",
             e.get("predicted_max_seq_len", "—"),
             f"{e['predicted_max_seq_len'] / base_predicted:.2f}x" if base_predicted and "predicted_max_seq_len" in e
             else "—",
             "—" if e.get("prediction_max_error") is None else f"{e['prediction_max_error']:.1%}",
             "yes" if e["hit_search_limit"] else "no") for e in result["results"]]
    head = (f"# Memory: {result['model']} ({result['method']}, {result['dtype']}) on {result['device_name']} "
            f"({result['device']})\n\nbudget: " + (f"{mib(budget):.0f} MiB of weights+optimizer state "
                                                    f"({mib(result['state_bytes']):.0f} MiB) plus saved activations"
                                                    if budget else "the device's memory (real training steps)")
            + f"; batch {result['batch_size']}; pool sampler (K={result['pool_size']}), worst entry must fit; "
              f"resolution {result['granularity']} tokens.\n")
    paper = result["paper_reference"]
    return (head + "\n" + markdown_table(["config", "max seq len", "vs baseline", "predicted max seq len",
                                           "predicted vs baseline", "saved-bytes prediction error (max over probes)",
                                           "hit search limit"], rows)
            + "\n\nPredictions are the analytic memory model's (dropbp.core.memory_model), made from the shape alone; "
              "the error compares its saved-activation bytes with the measured ones at every probe."
            + checkpointing_advice(result["results"])
            + f"\n\nPaper, for reference (not measured here): {paper['max_seq_len_ratio']}x at p={paper['drop_rate']} "
              f"({paper['setting']}).")


def memory_figure(result: dict[str, Any]) -> Any:
    """Bars of the longest sequence per drop rate, with the paper's 6.2x marked."""
    plt = pyplot()

    entries = result["results"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [e["label"].replace("dropbp ", "") for e in entries]
    ax.bar(labels, [e["max_seq_len"] for e in entries], color=["#888888"] + ["#3b75af"] * (len(entries) - 1))
    base = entries[0]["max_seq_len"]
    paper = result["paper_reference"]
    if base:
        ax.axhline(base * paper["max_seq_len_ratio"], ls="--", color="#d62728",
                   label=f"paper: {paper['max_seq_len_ratio']}x baseline at p={paper['drop_rate']}")
        ax.legend(fontsize=8)
    ax.set_ylabel("longest sequence that fits (tokens)")
    ax.set_title(f"{result['model']} {result['method']} on {result['device']}")
    fig.tight_layout()
    return fig


def main(settings: MemorySettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench memory``: validate, search, write ``memory.{json,md,png}``, print the table."""
    return run_benchmark("memory", settings, run_memory, memory_markdown, memory_figure, progress=progress)
