"""``dropbp bench recipe-time``: a shipped recipe's DropBP setting (or several ``contenders``, each a set of recipe
keys) against the same recipe with DropBP off, at the baseline's training time, over seeds: does the setting a user
gets lose anything in the same time?

Per seed: the baseline (DropBP off) trains the recipe's steps; the recipe as written (the contender) trains the
same steps, which gives its time per step; then the contender trains again for the baseline's time (its steps
scaled by the ratio of the two times, mean over seeds, its learning-rate and drop-rate schedules spanning the longer run). The
verdict per seed is whether it ends within ``loss_margin`` of the baseline's validation loss and ``match_margin``
of its exact match.

Times leave evaluation out. By default they are read through the one study runner's step-time model
(:mod:`.study`): short runs of DropBP off and uniform DropBP (and the recipe itself when its technique is not DropBP),
timed in interleaved rounds, fix seconds per step as ``a + b x FLOPs``, and each run's time is its steps and
training FLOPs (at the rates it realised) through it. So a run that trained while the machine was busy gets the
same time as on a quiet machine, and a rerun gives the same steps. ``time_model: false`` sums the step clock instead (:func:`~dropbp.benchmarks.harness.step_clock`: on the
CPU with one thread, the training thread's CPU time).
"""
from __future__ import annotations

import math
import statistics
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.recipes.for_benchmarks import (NON_NEGATIVE, SEEDS, Naming, Problems, environment, find_recipe,
                                           load_recipe, markdown_table, option_name, pyplot, setting)

from .harness import StudySettings, run_benchmark, runs_folder, step_clock
from .recipe_runs import RecipeWorkload, recipe_contender
from .step_time_model import StepTimeModel
from .study import Contender, StudyRun, Verdict, run_study, study_result


@dataclass
class RecipeTimeSettings(StudySettings):
    """What the recipe-time benchmark depends on."""

    recipe: str = setting("tiny-tasks", "a shipped recipe or a recipe file; its dropbp section is the contender",
                          allowed="a shipped recipe (dropbp recipes ls) or a recipe file")
    overrides: tuple[str, ...] = setting((), "key=value changes to the recipe for every run (e.g. train.steps=400)",
                                         allowed="comma-separated key=value, each a recipe field (docs/OPTIONS.md, dropbp train)")
    contenders: tuple[str, ...] = setting((), "contenders against DropBP off, each a space-separated list of recipe "
                                              "key=value (e.g. 'dropbp.drop_rate=0.5 dropbp.allocation=depth'); "
                                              "none: the recipe as written",
                                          allowed="comma-separated, each space-separated key=value recipe fields")
    cache_runs: bool = setting(False, "keep each finished run (and the clock) in the cache folder, so that a study "
                                      "stopped part-way resumes where it was")
    seeds: tuple[int, ...] = setting((0, 1, 2), "train.seed of each comparison",
                                     allowed=SEEDS)
    curve_every: int = setting(0, "evaluate every run's validation loss every N steps (the recipe's own evaluation, "
                                  "exact match included), for the perplexity-against-time curve and the speed-up to "
                                  "DropBP off's final perplexity; 0: at the start and the end only",
                               allowed=NON_NEGATIVE)
    equal_steps: bool = setting(True, "also train each contender for the baseline's steps (the equal-steps row); "
                                      "false: only for the baseline's time, its steps planned from the step-time "
                                      "model and the drop rates it targets (about two fifths less training per "
                                      "contender; needs time_model)")

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        if not self.equal_steps and not self.time_model:
            p.add(f"{name('equal_steps')} false plans each contender's steps through the step-time model: set "
                  f"{name('time_model')} true, or {name('equal_steps')} true.")
        bad = [text for text in self.overrides if "=" not in text]
        if bad:
            p.add(f"{name('overrides')} must each look like key=value, got {', '.join(bad)}.")
        bad = [text for text in self.contenders if not text.split() or any("=" not in w for w in text.split())]
        if bad:
            p.add(f"{name('contenders')} must each be space-separated key=value, got {', '.join(map(repr, bad))}.")


def _row(run: StudyRun) -> dict[str, Any]:
    """A run as the report lists it."""
    return {"steps": run.steps, "time_s": run.train_time_s,
            "measured_time_s": run.measured_time_s if run.measured_time_s is not None else run.train_time_s,
            "flops": run.train_flops, "val_loss": run.final_val_loss, "exact_match": run.final_exact_match,
            "realized_drop_fraction": run.realized_drop_fraction, **run.notes}


def _curve(run: StudyRun) -> list[dict[str, float]]:
    """A run's validation curve against its (modelled) training time: the paper's perplexity-against-hours view."""
    return [{"time_s": point.time_s, "val_loss": point.val_loss} for point in run.curve]


def perplexity(loss: float) -> float:
    """Validation perplexity, exp(mean token loss); the same target as the loss, since exp is monotonic."""
    return math.exp(min(loss, 700.0))


def run_recipe_time(settings: RecipeTimeSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Through the one study runner: per seed, the baseline, the recipe at equal steps and at the baseline's time
    (times from the step-time model unless ``time_model`` is off)."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    overrides = list(settings.overrides)
    workload = RecipeWorkload(settings.recipe, overrides, backend, curve_every=settings.curve_every)
    contenders = ([recipe_contender(settings.recipe, [*overrides, *text.split()], backend, label=text,
                                    extra=text.split()) for text in settings.contenders]
                  or [recipe_contender(settings.recipe, overrides, backend)])
    steps = load_recipe(find_recipe(settings.recipe), overrides, device=backend.name).train.steps
    study = run_study(workload, [Contender("DropBP off"), *contenders], steps=steps, seeds=settings.seeds,
                      equal_steps=settings.equal_steps, **settings.runner_options(),
                      cache=study_cache(settings) if settings.cache_runs else None, progress=progress)
    compared = []
    for contender in contenders:
        seeds = []
        for seed in settings.seeds:
            base = study.baseline(seed)
            same = next((r for r in study.runs if r.label == contender.label and r.seed == seed), None)
            timed = next(r for r in study.at_equal_time(contender.label) if r.seed == seed)
            verdict = Verdict.of(timed, base, **settings.margins())
            seeds.append({"seed": seed, "baseline": _row(base), "equal_steps": None if same is None else _row(same),
                          "equal_time": _row(timed), "holds": verdict.holds,
                          "speedup_to_target": verdict.loss_speedup,
                          "curves": {"baseline": _curve(base), "equal_time": _curve(timed)}})
            if progress:
                print(f"{contender.label}, seed {seed}: baseline {base.final_val_loss:.4f}/{base.final_exact_match} "
                      f"in {base.train_time_s:.1f} s; contender {timed.final_val_loss:.4f}/{timed.final_exact_match} "
                      f"in {timed.steps} steps ({'holds' if verdict.holds else 'outside'} the margins)", flush=True)
        compared.append({"label": contender.label, "overrides": list(contender.overrides), "seeds": seeds,
                         "holds": sum(s["holds"] for s in seeds)})
    extras = {"environment": environment(backend), "clock": step_clock(backend)[1], "contenders": compared,
              "total_time_s": time.perf_counter() - started}
    return study_result("recipe-time", settings, study, extras)


def study_cache(settings: RecipeTimeSettings) -> Path:
    """Where a recipe-time study keeps its finished runs and clock, so that a stopped study resumes: a folder of
    the cache keyed by the recipe's text, the overrides and the threads (the runs are the same whether their times
    are then read through the step-time model or not)."""
    text = Path(find_recipe(settings.recipe)).read_text(encoding="utf-8")
    described = ([text, list(settings.overrides), settings.threads, torch.get_num_threads()]
                 + ([settings.curve_every] if settings.curve_every else []))  # older studies keep their key
    return runs_folder("recipe-time", described)


def times_description(result: dict[str, Any]) -> str:
    """How the report's times were taken: the step-time model and its fit, or the step clock."""
    clock, fitted_model = result["extras"]["clock"], result["study"]["step_time_model"]
    if not fitted_model:
        return f"the {clock} summed over each run's steps (evaluation left out)"
    model = StepTimeModel.from_dict(fitted_model)
    fitted = ", ".join(f"{p['label']} {p['seconds'] * 1e3:.1f} ms" for p in model.points)
    return (f"a step-time model's ({model.formula()}; median step times by the {clock}, timed in "
            f"interleaved rounds: {fitted}; worst fit error {model.worst_error() * 100:.1f}%), from each run's steps and training FLOPs; "
            "*measured* is the step clock's sum during the run itself")


def _mean(rows: list[dict[str, Any]], run: str, key: str) -> str:
    values = [r[run][key] for r in rows if r[run] is not None and r[run][key] is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2g}"


def compared(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each contender's label, overrides, rows per seed and how many seeds hold the margins."""
    return result["extras"]["contenders"]


RUNS = (("baseline", "DropBP off"), ("equal_steps", "equal steps"), ("equal_time", "baseline's time"))


def recipe_time_markdown(result: dict[str, Any]) -> str:
    """Per contender, per seed and in the mean: validation loss, exact match, steps and time of its runs."""
    s, where = result["options"], result["extras"]["environment"]
    lines = [f"# {s['recipe']}: DropBP settings against DropBP off, at equal time, on {where['device_name']} "
             f"({where['device']})", "",
             f"Baseline: the recipe with DropBP off (dropbp.technique=dropbp, dropbp.drop_rate=0). Overrides for "
             f"every run: {', '.join(s['overrides']) or 'none'}. Times: {times_description(result)}. Margins: "
             f"validation loss at most +{s['loss_margin'] * 100:g}% and exact match at least "
             f"-{s['match_margin'] * 100:g} points against the baseline of the same seed, at the baseline's time. "
             "*Speed-up to target*: DropBP off's time to its own final validation perplexity over the contender's "
             "time to the same perplexity (the paper's measure; 'never' when it does not get there).", ""]
    for entry in compared(result):
        rows = entry["seeds"]
        first = rows[0]["equal_time"]
        described = " ".join(entry["overrides"]) or "the recipe as shipped"
        table = [(r["seed"], label, r[run]["steps"], f"{r[run]['time_s']:.1f}",
                  f"{r[run]['measured_time_s']:.1f}", f"{r[run]['val_loss']:.4f}",
                  f"{perplexity(r[run]['val_loss']):.3f}",
                  "-" if r[run]["exact_match"] is None else f"{r[run]['exact_match']:.3f}",
                  ("yes" if r["holds"] else "no") if run == "equal_time" else "",
                  _speedup(r) if run == "equal_time" else "")
                 for r in rows for run, label in RUNS if r[run] is not None]
        means = [(label, _mean(rows, run, "val_loss"), _mean(rows, run, "exact_match"), _mean(rows, run, "time_s"))
                 for run, label in RUNS if any(r[run] is not None for r in rows)]
        savings = rows[-1]["equal_time"]["savings"]
        lines += [f"## {entry['label']}", "",
                  f"Contender: {described} (technique {first['technique']}, drop rate {first['drop_rate']}, schedule "
                  f"{first['schedule']}). **Holds the margins in {entry['holds']} of {len(rows)} seeds.**", "",
                  markdown_table(["seed", "run", "steps", "time (s)", "measured (s)", "val loss", "val ppl",
                                  "exact match", "holds", "speed-up to target"], table), "",
                  "Mean ± standard deviation over seeds:", "",
                  markdown_table(["run", "val loss", "exact match", "time (s)"], means), "",
                  f"Last savings line of its run: {savings}", ""]
    return "\n".join([*lines, f"Total benchmark time: {result['extras']['total_time_s'] / 60:.0f} min."])


def _speedup(row: dict[str, Any]) -> str:
    return "never" if row["speedup_to_target"] is None else f"{row['speedup_to_target']:.2f}x"


def short_label(label: str, width: int = 34) -> str:
    """A contender's label for a legend: recipe keys without the ``dropbp.`` prefix, wrapped at ``width``."""
    return textwrap.fill(label.replace("dropbp.", ""), width)


def _perplexity_panel(ax: Any, entries: list[dict[str, Any]], *, zoom: bool = False) -> None:
    """Validation perplexity against hours of (modelled) training, one line per contender, the first seed's runs;
    ``zoom``: the second half of the time, on a linear scale, where the curves flatten."""
    first = entries[0]["seeds"][0]
    lines = [("DropBP off", first["curves"]["baseline"])]
    lines += [(entry["label"], entry["seeds"][0]["curves"]["equal_time"]) for entry in entries]
    end = max(p["time_s"] for _, curve in lines for p in curve) / 3600
    for label, curve in lines:
        points = [p for p in curve if not zoom or p["time_s"] / 3600 >= end / 2]
        ax.plot([p["time_s"] / 3600 for p in points], [perplexity(p["val_loss"]) for p in points], "o-", ms=3,
                label=short_label(label))
    ax.axhline(perplexity(first["baseline"]["val_loss"]), color="grey", lw=0.8, ls=":",
               label="DropBP off's final perplexity")
    ax.set_yscale("linear" if zoom else "log")
    ax.set_xlabel("training time (hours)")
    ax.set_title(f"validation perplexity, seed {first['seed']}" + (", second half" if zoom else ""))
    if zoom:
        ax.legend(fontsize=6)


def _bars(ax: Any, bars: list[tuple[str, list[dict[str, Any]]]], seeds: list[int], key: str, title: str) -> None:
    width = 0.8 / len(bars)
    values = []
    for k, (label, runs) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(seeds))]
        heights = [run[key] or 0.0 for run in runs]
        values += heights
        ax.bar(xs, heights, width, label=short_label(label))
    if key == "val_loss" and values:  # the differences are a few percent: show them
        low, high = min(values), max(values)
        ax.set_ylim(low - 0.5 * (high - low) - 1e-3, high + 0.5 * (high - low) + 1e-3)
    ax.set_xticks(range(len(seeds)), [f"seed {seed}" for seed in seeds])
    ax.set_title(f"{title}, at the baseline's time")


def recipe_time_figure(result: dict[str, Any]) -> Any:
    """Validation perplexity against hours (the paper's figure) and its flat second half, and validation loss (and
    exact match, where the recipe measures it) at the baseline's time: the baseline and each contender, per seed."""
    plt = pyplot()
    entries = compared(result)
    bars = [("DropBP off", [r["baseline"] for r in entries[0]["seeds"]])]
    bars += [(entry["label"], [r["equal_time"] for r in entry["seeds"]]) for entry in entries]
    matched = any(run["exact_match"] is not None for _, runs in bars for run in runs)
    panels = 3 + matched
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    axes = list(axes)
    _perplexity_panel(axes.pop(0), entries)
    _perplexity_panel(axes.pop(0), entries, zoom=True)
    seeds = [r["seed"] for r in entries[0]["seeds"]]
    _bars(axes[0], bars, seeds, "val_loss", "final validation loss")
    if matched:
        _bars(axes[1], bars, seeds, "exact_match", "final exact match")
    fig.suptitle(f"{result['options']['recipe']}: DropBP settings vs DropBP off")
    fig.tight_layout()
    return fig


def main(settings: RecipeTimeSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench recipe-time``: run, then write ``recipe-time-<recipe>.*``."""
    name = Path(settings.recipe).stem if settings.recipe.endswith(".yaml") else settings.recipe.replace("/", "-")
    return run_benchmark(f"recipe-time-{name}", settings, run_recipe_time, recipe_time_markdown, recipe_time_figure,
                         progress=progress)
