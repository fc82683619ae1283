"""A recipe as a study's workload: training it for a benchmark, with each step timed and the run's training FLOPs
counted; short runs of it timed for the study's clock.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbp.backends import Backend
from dropbp.recipes.for_benchmarks import FineTune, find_recipe, load_recipe, rate_schedule, training_flops

from .harness import CurvePoint, step_clock
from .study import Contender, StudyRun, Timer

#: Overrides that turn a recipe's technique off (exact backprop on every branch).
DROPBP_OFF = ("dropbp.technique=dropbp", "technique={}", "dropbp.drop_rate=0")


def train_recipe(recipe_name: str, overrides: list[str], backend: Backend) -> dict[str, Any]:
    """One run of a recipe with ``overrides`` (progress off, in a temporary folder): its final validation loss and
    exact match, steps, each step's time by the benchmark's step clock (evaluation left out), their sum as
    ``measured_time_s``, its training FLOPs (FLOPs model, at the rates it realised) and the technique's savings line."""
    recipe = load_recipe(find_recipe(recipe_name), overrides, device=backend.name)
    with tempfile.TemporaryDirectory(prefix="dropbp-recipe-time-") as folder:
        job = FineTune(recipe, Path(folder) / "run", progress=False)
        job.clock = step_clock(backend)[0]
        job.setup()
        try:
            summary = job.train()
            tokens = recipe.train.micro_batch_size * recipe.train.grad_accum * recipe.data.seq_len
            flops = training_flops(job.technique, job.flops_model, tokens, summary["steps"])
            policy = None if job.technique is None else job.technique.policy
            realized = policy.realized_drop_fraction() if policy is not None else 0.0
        finally:
            job.cleanup()
    last = summary["rows"][-1]
    match = float(last["exact_match"]) if last.get("exact_match") else None
    return {"steps": summary["steps"], "measured_time_s": sum(job.step_times), "step_times_s": job.step_times,
            "rows": summary["rows"],
            "realized_drop_fraction": realized,
            "flops": flops, "val_loss": float(last["val_loss"]), "exact_match": match, "savings": summary["savings"],
            "drop_rate": recipe.dropbp.drop_rate, "schedule": recipe.dropbp.schedule.kind,
            "technique": recipe.dropbp.technique}


#: Overrides that make a contender uniform DropBP at a constant rate (``{rate}``, ``{sampler}`` filled in).
UNIFORM_DROPBP = ("dropbp.technique=dropbp", "technique={{}}", "dropbp.drop_rate={rate}",
                  "dropbp.schedule.kind=constant", "dropbp.allocation=uniform", "dropbp.sampler={sampler}")


def recipe_contender(recipe_name: str, overrides: list[str], backend: Backend, *, label: str | None = None,
                     extra: list[str] | tuple[str, ...] = ()) -> Contender:
    """The recipe with ``overrides`` (its own technique, rate and schedule), as a study contender of kind ``recipe``;
    ``extra``: the recipe keys that make this contender (already among ``overrides``), kept with it."""
    recipe = load_recipe(find_recipe(recipe_name), overrides, device=backend.name)
    technique = recipe.dropbp.technique
    return Contender(label or f"recipe ({technique})", "recipe", technique, recipe.dropbp.drop_rate,
                     overrides=tuple(extra))


@dataclass
class RecipeWorkload:
    """A shipped recipe (or recipe file) with ``overrides`` as a study's workload: a contender is the recipe as
    written (kind ``recipe``), exact backprop, uniform DropBP, or whatever recipe keys its ``overrides`` set."""

    recipe: str
    overrides: list[str]
    backend: Backend
    warmup: int = 2
    curve_every: int = 0

    def contender_overrides(self, contender: Contender) -> list[str]:
        """The recipe keys that make ``contender``."""
        if contender.overrides or contender.kind == "recipe":
            return list(contender.overrides)
        if contender.is_baseline:
            return list(DROPBP_OFF)
        if contender.technique == "dropbp" and contender.schedule == "constant" and contender.allocation == "uniform":
            return [o.format(rate=contender.rate, sampler=contender.sampler) for o in UNIFORM_DROPBP]
        raise ValueError(f"a recipe study cannot make {contender!r} without recipe overrides.")

    def train(self, contender: Contender, lr: float | None, seed: int, steps: int, *, progress: bool) -> StudyRun:
        """The recipe run for ``steps`` steps (evaluated at the start, every ``curve_every`` steps and at the end; no
        checkpoints), timed by the step clock. A point's FLOPs are the run's total split in proportion to the step
        times before it (steps that drop more are cheaper in both)."""
        extra = [f"train.seed={seed}", f"train.steps={steps}", f"train.eval_every={self.curve_every}",
                 "train.save_every=0"]
        if lr is not None:
            extra.append(f"optim.lr={lr}")
        run = train_recipe(self.recipe, [*self.overrides, *self.contender_overrides(contender), *extra], self.backend)
        elapsed = [0.0, *itertools.accumulate(run["step_times_s"])]  # step clock before each step
        total = run["measured_time_s"] or 1.0
        curve = [CurvePoint(step=int(row["step"]), time_s=elapsed[int(row["step"])],
                            flops=run["flops"] * elapsed[int(row["step"])] / total, val_loss=float(row["val_loss"]),
                            exact_match=float(row["exact_match"]) if row.get("exact_match") else None)
                 for row in run["rows"] if row.get("val_loss") not in (None, "")]
        end = CurvePoint(step=steps, time_s=run["measured_time_s"], flops=run["flops"], val_loss=run["val_loss"],
                         exact_match=run["exact_match"])
        curve = [point for point in curve if point.step < steps] + [end]
        notes = {k: run[k] for k in ("savings", "drop_rate", "schedule", "technique")}
        return StudyRun(contender.label, steps, run["measured_time_s"], run["flops"], curve,
                        run["realized_drop_fraction"], kind=contender.kind, rate=contender.rate, lr=lr, seed=seed,
                        notes=notes)

    def planned_rates(self, contender: Contender, steps: int) -> list[float]:
        """The drop rate each step of a ``steps``-step run of ``contender`` targets: its recipe's ``drop_rate``
        through its drop-rate schedule (0 in an exact warm-up); a sensitivity or depth allocation meets the same
        share of the FLOPs. 0 on every step for a technique other than DropBP."""
        recipe = load_recipe(find_recipe(self.recipe), [*self.overrides, *self.contender_overrides(contender),
                                                        f"train.steps={steps}"], device=self.backend.name)
        section = recipe.dropbp
        if section.technique != "dropbp":
            return [0.0] * steps
        schedule = rate_schedule(section.schedule, steps, section.sampler)
        return [section.drop_rate if schedule is None else schedule.rate_at(step, section.drop_rate)
                for step in range(steps)]

    def timer(self, contender: Contender) -> Timer:
        """Each call a short run of the recipe (``warmup`` untimed steps, then the timed ones, seed 0, its
        untimed evaluations one batch each), printing nothing: its steps' times by the step clock, each at the run's
        mean FLOPs."""
        def time_steps(count: int) -> list[tuple[float, float]]:
            short = [f"train.steps={self.warmup + count}", "train.exact_match=0", "train.seed=0", "train.eval_every=0",
                     "train.eval_batches=1"]  # untimed evaluation, kept to one batch
            with contextlib.redirect_stdout(io.StringIO()):
                run = train_recipe(self.recipe, [*self.overrides, *self.contender_overrides(contender), *short],
                                   self.backend)
            return [(seconds, run["flops"] / run["steps"]) for seconds in run["step_times_s"][self.warmup:]]

        return time_steps
