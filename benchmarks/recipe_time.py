"""``dropbp bench recipe-time``: a shipped recipe's DropBP setting against the same recipe with DropBP off, at the
baseline's training time, over seeds: does the setting a user gets by default lose anything in the same time?

Per seed: the baseline (``dropbp.drop_rate=0``) trains the recipe's steps; the recipe as written (the contender)
trains the same steps, which gives its time per step; then the contender trains again for the baseline's time (its
steps scaled by the ratio of the two times, its learning-rate and drop-rate schedules spanning the longer run). The
verdict per seed is whether it ends within ``loss_margin`` of the baseline's validation loss and ``match_margin``
of its exact match. Validation runs only at the start and the end, so evaluation costs every run alike; on the CPU
with one thread, times are the training thread's CPU time (:func:`~dropbp.benchmarks.harness.step_clock`).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.recipes import (FineTune, Naming, Problems, check_non_negative, check_number, check_seed, environment,
                            find_recipe, load_recipe, markdown_table, option_name, pyplot, setting)

from .harness import BenchSettings, run_benchmark, step_clock


@dataclass
class RecipeTimeSettings(BenchSettings):
    """What the recipe-time benchmark depends on."""

    recipe: str = setting("tiny-tasks", "a shipped recipe or a recipe file; its dropbp section is the contender")
    overrides: tuple[str, ...] = setting((), "key=value changes to the recipe for every run (e.g. train.steps=400)")
    seeds: tuple[int, ...] = setting((0, 1, 2), "train.seed of each comparison")
    loss_margin: float = setting(0.03, "the contender may end this much above the baseline's validation loss "
                                       "(relative)")
    match_margin: float = setting(0.02, "and this much below its exact match (absolute)")
    threads: int = setting(1, "CPU threads (0: PyTorch's default)")

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
        p.check(check_non_negative, self, "threads", naming=name)


def _train(settings: RecipeTimeSettings, seed: int, extra: list[str], backend: Backend) -> dict[str, Any]:
    """One run of the recipe (progress off, validation at the start and the end only); its final validation loss,
    exact match, steps, training time and the technique's verdict."""
    overrides = [*settings.overrides, f"train.seed={seed}", "train.eval_every=0", "train.save_every=0", *extra]
    recipe = load_recipe(find_recipe(settings.recipe), overrides, device=backend.name)
    clock, _ = step_clock(backend)
    with tempfile.TemporaryDirectory(prefix="dropbp-recipe-time-") as folder:
        job = FineTune(recipe, Path(folder) / "run", progress=False)
        job.setup()
        try:
            start = clock()
            summary = job.train()
            took = clock() - start
        finally:
            job.cleanup()
    last = summary["rows"][-1]
    match = float(last["exact_match"]) if last.get("exact_match") else None
    return {"steps": summary["steps"], "time_s": took, "val_loss": float(last["val_loss"]), "exact_match": match,
            "verdict": summary["verdict"], "drop_rate": recipe.dropbp.drop_rate,
            "schedule": recipe.dropbp.schedule.kind, "technique": recipe.dropbp.technique}


def run_recipe_time(settings: RecipeTimeSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Per seed: baseline, contender at equal steps, contender at the baseline's time."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    seeds = []
    for seed in settings.seeds:
        base = _train(settings, seed, ["dropbp.drop_rate=0"], backend)
        same = _train(settings, seed, [], backend)
        steps = max(1, round(base["steps"] * base["time_s"] / same["time_s"]))
        timed = _train(settings, seed, [f"train.steps={steps}"], backend)
        within = (timed["val_loss"] <= base["val_loss"] * (1 + settings.loss_margin)
                  and (base["exact_match"] is None
                       or timed["exact_match"] >= base["exact_match"] - settings.match_margin))
        seeds.append({"seed": seed, "baseline": base, "equal_steps": same, "equal_time": timed, "within": within})
        if progress:
            print(f"seed {seed}: baseline {base['val_loss']:.4f}/{base['exact_match']} in {base['time_s']:.1f} s; "
                  f"contender {timed['val_loss']:.4f}/{timed['exact_match']} in {timed['steps']} steps "
                  f"({'within' if within else 'outside'} the margins)", flush=True)
    return {"benchmark": "recipe-time", **environment(backend), "settings": settings.to_dict(),
            "clock": step_clock(backend)[1], "seeds": seeds, "within": sum(s["within"] for s in seeds),
            "total_time_s": time.perf_counter() - started}


def _mean(rows: list[dict[str, Any]], run: str, key: str) -> str:
    values = [r[run][key] for r in rows if r[run][key] is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2g}"


def recipe_time_markdown(result: dict[str, Any]) -> str:
    """Per seed and in the mean: validation loss, exact match, steps and time of the three runs."""
    s, rows = result["settings"], result["seeds"]
    contender = rows[0]["equal_steps"]
    table = [(r["seed"], label, r[run]["steps"], f"{r[run]['time_s']:.1f}", f"{r[run]['val_loss']:.4f}",
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
        f"schedule {contender['schedule']}); baseline: the same with dropbp.drop_rate=0. Overrides: "
        f"{', '.join(s['overrides']) or 'none'}. Times: {result['clock']}. Margins: validation loss at most "
        f"+{s['loss_margin'] * 100:g}% and exact match at least -{s['match_margin'] * 100:g} points against the "
        f"baseline of the same seed, at the baseline's time.", "",
        f"**Within the margins in {result['within']} of {len(rows)} seeds.**", "",
        markdown_table(["seed", "run", "steps", "time (s)", "val loss", "exact match", "within"], table), "",
        "Mean ± standard deviation over seeds:", "",
        markdown_table(["run", "val loss", "exact match", "time (s)"], means), "",
        f"Last verdict line of the recipe's run: {rows[-1]['equal_time']['verdict']}", "",
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
