"""``dropbp bench recipe-time``: a shipped recipe's DropBP setting against the same recipe with DropBP off, at the
baseline's training time, over seeds: does the setting a user gets by default lose anything in the same time?

Per seed: the baseline (DropBP off) trains the recipe's steps; the recipe as written (the contender) trains the
same steps, which gives its time per step; then the contender trains again for the baseline's time (its steps
scaled by the ratio of the two times, mean over seeds, its learning-rate and drop-rate schedules spanning the longer run). The
verdict per seed is whether it ends within ``loss_margin`` of the baseline's validation loss and ``match_margin``
of its exact match.

Times leave evaluation out. By default they are read through the one study runner's step-time model
(:mod:`.study`): short runs of DropBP off and uniform DropBP (and the recipe itself when its technique is not DropBP),
timed in interleaved rounds, fix seconds per step as ``a + b x FLOPs``, and each run's time is its steps and training FLOPs (at the rates it realised) through it. So a
run that trained while the machine was busy gets the same time as on a quiet machine, and a rerun gives the same
steps. ``time_model: false`` sums the step clock instead (:func:`~dropbp.benchmarks.harness.step_clock`: on the
CPU with one thread, the training thread's CPU time).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.recipes.for_benchmarks import (Naming, Problems, check_number, check_seed, environment, find_recipe, load_recipe,
                            markdown_table, option_name, pyplot, setting)

from .harness import HOLDS_LOSS_MARGIN, HOLDS_MATCH_MARGIN, StudySettings, run_benchmark, step_clock
from .recipe_runs import RecipeWorkload, adaptive_overhead_s, recipe_contender
from .step_time_model import StepTimeModel
from .study import Contender, StudyRun, Verdict, run_study


@dataclass
class RecipeTimeSettings(StudySettings):
    """What the recipe-time benchmark depends on."""

    recipe: str = setting("tiny-tasks", "a shipped recipe or a recipe file; its dropbp section is the contender",
                          allowed='a shipped recipe (dropbp recipes ls) or a recipe file')
    overrides: tuple[str, ...] = setting((), "key=value changes to the recipe for every run (e.g. train.steps=400)",
                                         allowed='comma-separated key=value, each a recipe field (docs/OPTIONS.md, dropbp train)')
    seeds: tuple[int, ...] = setting((0, 1, 2), "train.seed of each comparison",
                                     allowed='comma-separated, at least one, each an integer in [0, 2**32)')
    loss_margin: float = setting(HOLDS_LOSS_MARGIN, "the contender may end this much above the baseline's "
                                                    "validation loss (relative)", allowed='finite number >= 0')
    match_margin: float = setting(HOLDS_MATCH_MARGIN, "and this much below its exact match (absolute)",
                                  allowed='finite number >= 0')
    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        if not self.seeds:
            p.add(f"{name('seeds')} needs at least one seed.")
        for seed in self.seeds:
            p.check(check_seed, seed, name("seeds"))
        bad = [text for text in self.overrides if "=" not in text]
        if bad:
            p.add(f"{name('overrides')} must each look like key=value, got {', '.join(bad)}.")
        p.check(check_number, name("loss_margin"), self.loss_margin, low=0)
        p.check(check_number, name("match_margin"), self.match_margin, low=0)


def _row(run: StudyRun) -> dict[str, Any]:
    """A run as the report lists it."""
    return {"steps": run.steps, "time_s": run.train_time_s,
            "measured_time_s": run.measured_time_s if run.measured_time_s is not None else run.train_time_s,
            "flops": run.train_flops, "val_loss": run.final_val_loss, "exact_match": run.final_exact_match,
            "realized_drop_fraction": run.realized_drop_fraction, **run.notes}


def run_recipe_time(settings: RecipeTimeSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Through the one study runner: per seed, the baseline, the recipe at equal steps and at the baseline's time
    (times from the step-time model unless ``time_model`` is off)."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    overrides = list(settings.overrides)
    workload = RecipeWorkload(settings.recipe, overrides, backend)
    contender = recipe_contender(settings.recipe, overrides, backend)
    steps = load_recipe(find_recipe(settings.recipe), overrides, device=backend.name).train.steps
    study = run_study(workload, [Contender("DropBP off"), contender], steps=steps, seeds=settings.seeds,
                      time_model=settings.time_model, progress=progress)
    seeds = []
    for seed in settings.seeds:
        base = study.baseline(seed)
        same = next(r for r in study.runs if r.label == contender.label and r.seed == seed)
        timed = next(r for r in study.at_equal_time(contender.label) if r.seed == seed)
        within = Verdict.of(timed, base, loss_margin=settings.loss_margin, match_margin=settings.match_margin).holds
        seeds.append({"seed": seed, "baseline": _row(base), "equal_steps": _row(same), "equal_time": _row(timed),
                      "within": within})
        if progress:
            print(f"seed {seed}: baseline {base.final_val_loss:.4f}/{base.final_exact_match} in "
                  f"{base.train_time_s:.1f} s; contender {timed.final_val_loss:.4f}/{timed.final_exact_match} in "
                  f"{timed.steps} steps ({'within' if within else 'outside'} the margins)", flush=True)
    adaptive = seeds[0]["equal_steps"]["schedule"] == "adaptive"
    model = study.time_model
    return {"benchmark": "recipe-time", **environment(backend), "settings": settings.to_dict(),
            "clock": step_clock(backend)[1], "time_model": None if model is None else model.to_dict(),
            "adaptive_overhead_s": adaptive_overhead_s() if adaptive else None,
            "seeds": seeds, "within": sum(s["within"] for s in seeds), "total_time_s": time.perf_counter() - started}


def times_description(result: dict[str, Any]) -> str:
    """How the report's times were taken: the step-time model and its fit, or the step clock."""
    if not result.get("time_model"):
        return f"the {result['clock']} summed over each run's steps (evaluation left out)"
    model = StepTimeModel.from_dict(result["time_model"])
    fitted = ", ".join(f"{p['label']} {p['seconds'] * 1e3:.1f} ms" for p in model.points)
    return (f"a step-time model's ({model.formula()}; median step times by the {result['clock']}, timed in "
            f"interleaved rounds: {fitted}; worst fit error {model.worst_error() * 100:.1f}%), from each run's steps and training FLOPs; "
            "*measured* is the step clock's sum during the run itself")


def overhead_lines(result: dict[str, Any]) -> list[str]:
    """The adaptive rate's own cost per step against the baseline's mean step time (none for other settings)."""
    overhead = result.get("adaptive_overhead_s")
    if overhead is None:
        return []
    base = statistics.fmean(r["baseline"]["time_s"] / r["baseline"]["steps"] for r in result["seeds"])
    return [f"The adaptive rate's own work (choosing each step's rate, scoring windows, deciding): "
            f"{overhead * 1e6:.1f} µs per step, {overhead / base * 100:.2g}% of the baseline's mean step time "
            f"({base * 1e3:.1f} ms).", ""]


def _mean(rows: list[dict[str, Any]], run: str, key: str) -> str:
    values = [r[run][key] for r in rows if r[run][key] is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2g}"


def recipe_time_markdown(result: dict[str, Any]) -> str:
    """Per seed and in the mean: validation loss, exact match, steps and time of the three runs."""
    s, rows = result["settings"], result["seeds"]
    contender = rows[0]["equal_steps"]
    table = [(r["seed"], label, r[run]["steps"], f"{r[run]['time_s']:.1f}",
              f"{r[run].get('measured_time_s', r[run]['time_s']):.1f}", f"{r[run]['val_loss']:.4f}",
              "-" if r[run]["exact_match"] is None else f"{r[run]['exact_match']:.3f}",
              ("yes" if r["within"] else "no") if run == "equal_time" else "")
             for r in rows for run, label in (("baseline", "DropBP off"), ("equal_steps", "recipe, equal steps"),
                                              ("equal_time", "recipe, baseline's time"))]
    means = [(label, _mean(rows, run, "val_loss"), _mean(rows, run, "exact_match"), _mean(rows, run, "time_s"))
             for run, label in (("baseline", "DropBP off"), ("equal_steps", "recipe, equal steps"),
                                ("equal_time", "recipe, baseline's time"))]
    return "\n".join([
        f"# {s['recipe']}: the recipe's DropBP setting against DropBP off, at equal time, on {result['device_name']} "
        f"({result['device']})", "",
        f"Contender: the recipe as shipped (technique {contender['technique']}, drop rate {contender['drop_rate']}, "
        f"schedule {contender['schedule']}); baseline: the same with DropBP off (dropbp.technique=dropbp, "
        f"dropbp.drop_rate=0). Overrides: {', '.join(s['overrides']) or 'none'}. Times: {times_description(result)}. "
        f"Margins: validation loss at most "
        f"+{s['loss_margin'] * 100:g}% and exact match at least -{s['match_margin'] * 100:g} points against the "
        f"baseline of the same seed, at the baseline's time.", "",
        f"**Within the margins in {result['within']} of {len(rows)} seeds.**", "",
        markdown_table(["seed", "run", "steps", "time (s)", "measured (s)", "val loss", "exact match", "within"],
                       table), "",
        "Mean ± standard deviation over seeds:", "",
        markdown_table(["run", "val loss", "exact match", "time (s)"], means), "",
        f"Last savings line of the recipe's run: {rows[-1]['equal_time'].get('savings', rows[-1]['equal_time'].get('verdict'))}", "",
        *overhead_lines(result),
        f"Total benchmark time: {result['total_time_s'] / 60:.0f} min.",
    ])


def recipe_time_figure(result: dict[str, Any]) -> Any:
    """Validation loss and exact match per seed: baseline, equal steps, equal time."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    runs = (("baseline", "DropBP off"), ("equal_steps", "recipe, equal steps"), ("equal_time", "recipe, equal time"))
    width = 0.25
    for k, (run, label) in enumerate(runs):
        xs = [i + (k - 1) * width for i in range(len(result["seeds"]))]
        axes[0].bar(xs, [r[run]["val_loss"] for r in result["seeds"]], width, label=label)
        axes[1].bar(xs, [r[run]["exact_match"] or 0.0 for r in result["seeds"]], width, label=label)
    for ax, title in zip(axes, ("final validation loss", "final exact match")):
        ax.set_xticks(range(len(result["seeds"])), [f"seed {r['seed']}" for r in result["seeds"]])
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['settings']['recipe']}: the recipe's DropBP setting vs DropBP off")
    fig.tight_layout()
    return fig


def main(settings: RecipeTimeSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench recipe-time``: run, then write ``recipe-time-<recipe>.*``."""
    name = Path(settings.recipe).stem if settings.recipe.endswith(".yaml") else settings.recipe.replace("/", "-")
    return run_benchmark(f"recipe-time-{name}", settings, run_recipe_time, recipe_time_markdown, recipe_time_figure,
                         progress=progress)
