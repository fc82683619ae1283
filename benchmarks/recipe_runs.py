"""Training a recipe for a benchmark, with each step timed and the run's training FLOPs counted; a step-time model
of the recipe (seconds per step = a + b x FLOPs), fitted to short runs of DropBP off and uniform DropBP timed in
interleaved rounds, so that "the baseline's time" does not depend on how busy the machine was during each run; and
the adaptive rate's own cost per step.
"""
from __future__ import annotations

import contextlib
import io
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dropbp.backends import Backend
from dropbp.core import AdaptiveRate
from dropbp.recipes import FineTune, find_recipe, load_recipe, training_flops

from .harness import step_clock
from .step_time_model import CALIBRATION_RATES, StepTimeModel, fit_step_time

#: Overrides that turn a recipe's technique off (exact backprop on every branch).
DROPBP_OFF = ("dropbp.technique=dropbp", "technique={}", "dropbp.drop_rate=0")


def train_recipe(recipe_name: str, overrides: list[str], backend: Backend) -> dict[str, Any]:
    """One run of a recipe with ``overrides`` (progress off, in a temporary folder): its final validation loss and
    exact match, steps, each step's time by the benchmark's step clock (evaluation left out), their sum as
    ``measured_time_s``, its training FLOPs (FLOPs model, at the rates it realised) and the technique's verdict."""
    recipe = load_recipe(find_recipe(recipe_name), overrides, device=backend.name)
    with tempfile.TemporaryDirectory(prefix="dropbp-recipe-time-") as folder:
        job = FineTune(recipe, Path(folder) / "run", progress=False)
        job.clock = step_clock(backend)[0]
        job.setup()
        try:
            summary = job.train()
            tokens = recipe.train.micro_batch_size * recipe.train.grad_accum * recipe.data.seq_len
            flops = training_flops(job.technique, job.flops_model, tokens, summary["steps"])
        finally:
            job.cleanup()
    last = summary["rows"][-1]
    match = float(last["exact_match"]) if last.get("exact_match") else None
    return {"steps": summary["steps"], "measured_time_s": sum(job.step_times), "step_times_s": job.step_times,
            "flops": flops, "val_loss": float(last["val_loss"]), "exact_match": match, "verdict": summary["verdict"],
            "drop_rate": recipe.dropbp.drop_rate, "schedule": recipe.dropbp.schedule.kind,
            "technique": recipe.dropbp.technique}


def own_label(recipe_name: str, overrides: list[str], backend: Backend) -> str | None:
    """The label the step-time model gives the recipe's own technique when that is not DropBP (timed as itself,
    with its own factor on the line); None for DropBP, which is read off the line by its FLOPs."""
    technique = load_recipe(find_recipe(recipe_name), overrides, device=backend.name).dropbp.technique
    return None if technique == "dropbp" else f"recipe ({technique})"


def calibrate_recipe(recipe_name: str, overrides: list[str], backend: Backend, *, rounds: int = 5, steps: int = 10,
                     warmup: int = 2) -> StepTimeModel:
    """Time ``rounds`` short runs (``warmup`` + ``steps`` steps, the first ``warmup`` untimed) of each configuration
    in turn: DropBP off, uniform DropBP at :data:`CALIBRATION_RATES` with a constant rate, and the recipe itself when
    its technique is not DropBP. A configuration's step time is the median over rounds of a round's mean step time
    (a mean, as its FLOPs per step are: a random mask makes step times vary about their mean); the step-time model
    is fitted to them. The short runs print nothing."""
    configs: dict[str, tuple[list[str], bool]] = {"DropBP off": (list(DROPBP_OFF), False)}
    for rate in CALIBRATION_RATES:
        configs[f"DropBP p={rate:g}"] = (["dropbp.technique=dropbp", "technique={}", f"dropbp.drop_rate={rate}",
                                          "dropbp.schedule.kind=constant", "dropbp.allocation=uniform"], False)
    own = own_label(recipe_name, overrides, backend)
    if own is not None:
        configs[own] = ([], True)
    seconds: dict[str, list[float]] = {label: [] for label in configs}
    flops: dict[str, list[float]] = {label: [] for label in configs}
    short = [f"train.steps={warmup + steps}", "train.exact_match=0", "train.seed=0"]
    for _ in range(rounds):
        for label, (extra, _) in configs.items():
            with contextlib.redirect_stdout(io.StringIO()):
                run = train_recipe(recipe_name, [*overrides, *extra, *short], backend)
            seconds[label].append(statistics.fmean(run["step_times_s"][warmup:]))
            flops[label].append(run["flops"] / run["steps"])
    return fit_step_time([{"label": label, "flops": statistics.fmean(flops[label]),
                           "seconds": statistics.median(seconds[label]), "timed_steps": rounds * steps,
                           "own_scale": scaled} for label, (_, scaled) in configs.items()])


def adaptive_overhead_s(steps: int = 5000) -> float:
    """Seconds per step the adaptive rate's own work costs (the engine's :meth:`~AdaptiveRate.factor` query and
    the driver's :meth:`~AdaptiveRate.observe`, window scoring and decisions included), timed by this thread's CPU
    clock over ``steps`` steps of a falling, noisy loss made beforehand."""
    rng = random.Random(0)
    losses = [2.0 / (1.0 + step / 200) + rng.gauss(0.0, 0.05) for step in range(steps)]
    controller = AdaptiveRate()
    start = time.thread_time()
    for step, loss in enumerate(losses):
        controller.factor(step, 1.0)
        controller.observe(step, loss)
    return (time.thread_time() - start) / steps
