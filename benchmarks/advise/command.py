"""``dropbp advise RECIPE [--device D] [--budget MINUTES]``: probe the recipe's own model, method, data and device
for a few minutes and say whether DropBP should pay there, with the recipe keys to paste; writes
``advise-RECIPE.{json,md,png}``. Experimental: see ``benchmarks/README.md`` for how its predictions held."""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dropbp.backends import Backend
from dropbp.core.errors import ConfigError
from dropbp.core.progress import progress_bar
from dropbp.recipes.for_benchmarks import (NON_NEGATIVE, POSITIVE, POSITIVE_NUMBER, RATES, Naming, Problems,
                                           add_command, find_recipe, markdown_table, option_name, pyplot, setting)

from ..harness import BenchSettings, run_benchmark
from .predict import BASES, predict, recommend
from .probe import ALLOCATIONS, Candidate, GradientProbe, measure_candidates
from .targets import Target, recipe_target

#: Rounds the probe never goes beyond, however large the budget (more buys little: the bootstrap shows it).
MAX_ROUNDS = 8


@dataclasses.dataclass
class ProbeSettings(BenchSettings):
    """How the probe measures: its budget, the candidate settings, masks, when, and what it recommends on."""

    budget: float = setting(5.0, "minutes the probe may take once the model is loaded and its exact steps trained "
                                 "(its rounds are sized to fit; at least two rounds are needed)",
                            allowed=POSITIVE_NUMBER)
    drop_rates: tuple[float, ...] = setting((0.5, 0.75), "drop rates of the candidate settings", allowed=RATES)
    allocations: tuple[str, ...] = setting(ALLOCATIONS, "how each candidate's rates are allocated", choices=ALLOCATIONS)
    masks: int = setting(2, "masks per candidate and round", allowed=POSITIVE)
    after_steps: int = setting(0, "exact training steps before probing (the gradient later in a run)",
                               allowed=NON_NEGATIVE)
    basis: str = setting("per-mask", "what the recommendation rests on: the gradient kept per mask (one step) or of "
                                     "the mean of masks (what steps average to)", choices=BASES)


@dataclasses.dataclass
class AdviseSettings(ProbeSettings):
    """What ``dropbp advise`` probes and for how long; :meth:`validate` checks it before any work starts."""

    recipe: str = setting("tiny-tasks", "the recipe to advise on (also the positional RECIPE; the default is the "
                                        "one-minute example)",
                          allowed="a shipped recipe (dropbp recipes ls) or a recipe file")
    overrides: tuple[str, ...] = setting((), "key=value changes to the recipe (e.g. train.precision=mixed-bf16)",
                                         allowed="comma-separated key=value, each a recipe field (docs/OPTIONS.md)")

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        p.check(find_recipe, self.recipe)


def _candidates(settings: ProbeSettings) -> list[Candidate]:
    return [Candidate(rate, allocation) for allocation in settings.allocations for rate in settings.drop_rates]


def probe_target(target: Target, settings: ProbeSettings, backend: Backend, *, started: float,
                 progress: bool = True) -> dict[str, Any]:
    """Size the rounds to what is left of the budget (from one untimed and one timed exact pass), measure every
    candidate in interleaved rounds on ``target`` and predict; the result (a budget too small is refused)."""
    candidates = _candidates(settings)
    probe = GradientProbe(target.model, target.loss_fn, backend, seq_len=target.seq_len, seed=settings.seed)
    try:
        probe.gradient(target.batch(0), None)  # warm-up, untimed
        wall = time.perf_counter()
        probe.gradient(target.batch(0), None)
        one = time.perf_counter() - wall  # the budget is wall time, whatever clock times the passes
        per_round = one * (1 + len(candidates) * settings.masks)
        spent = time.perf_counter() - started
        rounds = min(MAX_ROUNDS, int((settings.budget * 60 - spent) // per_round))
        if rounds < 2:
            raise ConfigError(
                f"--budget {settings.budget:g} minutes is too small to measure {target.name} here: one round (exact "
                f"backprop and {len(candidates)} candidates x {settings.masks} masks) takes about {per_round:.0f} s "
                f"and two are needed; give at least {(2 * per_round + spent) / 60 * 1.2:.1f} minutes, or fewer "
                "candidates (--drop-rates, --allocations) or masks.")
        bar = progress_bar(total=rounds * (1 + len(candidates) * settings.masks), desc="probing", enabled=progress)
        exact, measured = measure_candidates(probe, candidates, target.batch, rounds=rounds, masks=settings.masks,
                                             tick=lambda: bar.update(1), flops_model=target.flops_model,
                                             model_inputs=target.model_inputs)
        bar.close()
    finally:
        probe.close()
    predictions = [predict(exact, m, seed=settings.seed) for m in measured]
    best = recommend(predictions, settings.basis)
    chosen = None if best is None else candidates[predictions.index(best)]
    return {"benchmark": "advise", "recipe": target.name, "method": target.method, "options": settings.to_dict(),
            "rounds": rounds, "masks": settings.masks, "probe_seconds": time.perf_counter() - started,
            "exact": exact.to_dict(), "candidates": [m.to_dict() for m in measured],
            "predictions": [p.to_dict() for p in predictions],
            "recommendation": None if best is None else best.to_dict(),
            "keys": [] if chosen is None else chosen.recipe_keys()}


def measure(settings: AdviseSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Load the recipe (DropBP off), train ``after_steps`` exact steps, then :func:`probe_target` (the budget
    counts from the loaded model)."""
    with recipe_target(settings.recipe, settings.overrides, backend, seed=settings.seed,
                       after_steps=settings.after_steps, progress=progress) as target:
        return probe_target(target, settings, backend, started=time.perf_counter(), progress=progress)


def _row(p: dict[str, Any]) -> list[str]:
    flops = "-" if p["flops_speed"] is None else f"{p['flops_speed']:.2f}x"
    return [p["label"], f"{p['drop_fraction']:.2f}", flops, f"{p['speed']:.2f}x", f"{p['kept']:.3f}",
            f"{p['kept_mean']:.3f}", f"{p['predicted']:.2f}x ({p['low']:.2f}-{p['high']:.2f})",
            f"{p['predicted_mean']:.2f}x"]


def markdown(result: dict[str, Any]) -> str:
    """The one screen: the recommendation, the recipe keys to paste, and the numbers it rests on."""
    rec, options = result["recommendation"], result["options"]
    if rec is None:
        best = max(result["predictions"], key=lambda p: p["predicted"])
        verdict = (f"**Recommendation: DropBP off.** No candidate is predicted to reach DropBP off's loss sooner in "
                   f"the same time (best: {best['label']}, {best['predicted']:.2f}x, 10-90% "
                   f"{best['low']:.2f}-{best['high']:.2f}x).")
    else:
        verdict = (f"**Recommendation: {rec['label']}**, predicted to reach DropBP off's loss {rec['predicted']:.2f}x "
                   f"sooner (10-90% {rec['low']:.2f}-{rec['high']:.2f}x). Paste: `dropbp train {result['recipe']} "
                   f"{' '.join(result['keys'])}`.")
    return "\n".join([
        f"# dropbp advise {result['recipe']} ({result['method']})", "", verdict, "",
        f"Probe: {result['rounds']} rounds x (exact backprop + {len(result['candidates'])} candidates x "
        f"{result['masks']} masks), {result['probe_seconds'] / 60:.1f} min, after {options['after_steps']} exact "
        f"steps; basis of the recommendation: {options['basis']}. *Step speed*: exact backprop's forward+backward "
        "time over the candidate's (medians); *FLOPs speed*: the same by the FLOPs model. *Kept*: the candidate's "
        "gradient's cosine with another batch's exact gradient over exact backprop's (per mask; of the mean of "
        "masks). *Predicted*: speed x kept, the 10-90% "
        "range of a bootstrap over rounds. Experimental: how these predictions held against equal-time studies is "
        "in benchmarks/README.md.", "",
        markdown_table(["candidate", "drop", "FLOPs speed", "step speed", "kept / mask", "kept / mean",
                        "predicted (10-90%)", "predicted (mean)"], [_row(p) for p in result["predictions"]])])


def figure(result: dict[str, Any]) -> Any:
    """Predicted speed-up per candidate with its range (1 = DropBP off), and step speed against gradient kept."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    preds = result["predictions"]
    xs = range(len(preds))
    left.bar(xs, [p["predicted"] for p in preds], yerr=[[p["predicted"] - p["low"] for p in preds],
                                                         [p["high"] - p["predicted"] for p in preds]], capsize=3)
    left.scatter(xs, [p["predicted_mean"] for p in preds], color="black", marker="x", label="mean of masks", zorder=3)
    left.axhline(1.0, color="grey", ls="--", lw=1)
    left.set_xticks(list(xs), [p["label"] for p in preds], rotation=30, ha="right", fontsize=7)
    left.set(ylabel="predicted speed-up to DropBP off's loss", title="prediction (bars: per mask)")
    left.legend(fontsize=7)
    for p in preds:
        right.scatter(p["speed"], p["kept"], s=20)
        right.annotate(p["label"], (p["speed"], p["kept"]), fontsize=6)
    top = max([p["speed"] for p in preds] + [1.0]) * 1.1
    grid = [1.0 + i * (top - 1.0) / 50 for i in range(51)]
    right.plot(grid, [1 / x for x in grid], "k--", lw=0.8, label="break-even (speed x kept = 1)")
    right.set(xlabel="step speed over exact backprop", ylabel="gradient kept (per mask)", title="what it rests on")
    right.legend(fontsize=7)
    fig.suptitle(f"dropbp advise {result['recipe']} ({result['method']})", fontsize=10)
    fig.tight_layout()
    return fig


def main(settings: AdviseSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp advise``: probe, predict, then write ``advise-RECIPE.{json,md,png}``."""
    name = Path(settings.recipe).stem if settings.recipe.endswith((".yaml", ".yml")) else settings.recipe
    return run_benchmark(f"advise-{name.replace('/', '-')}", settings, measure, markdown, figure, progress=progress)


def advise_run(recipe: str, overrides: Sequence[str], device: str, budget: float, out: Path, *,
               progress: bool = True) -> list[str]:
    """``dropbp.advise: true`` in ``dropbp train`` (found through the ``dropbp.advisors`` entry point): probe
    ``recipe`` with ``overrides`` as the run will train it, on ``device`` within ``budget`` minutes, with the
    default candidates; write ``advise-*.{json,md,png}`` into ``out``; return the recommended recipe keys (none:
    DropBP off)."""
    settings = AdviseSettings(recipe=recipe, overrides=tuple(overrides), device=device, budget=budget, out=str(out))
    try:
        settings.validate()
        return list(main(settings, progress=progress)["keys"])
    except ConfigError as err:  # named as the recipe names the budget
        raise ConfigError(str(err).replace("--budget", "dropbp.advise_budget")) from None


def _run(settings: AdviseSettings, args: argparse.Namespace) -> int:
    if args.recipe_name:
        settings = dataclasses.replace(settings, recipe=args.recipe_name)
    main(settings, progress=not args.quiet)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dropbp advise``."""
    help_text = "predict in minutes whether DropBP pays on a recipe (experimental)"
    parser = add_command(subparsers, "advise", AdviseSettings, _run, help=help_text,
                         description="Probe a recipe's model, data and device: each candidate DropBP setting's step "
                                     "cost and the gradient it keeps, and the setting predicted to reach DropBP off's "
                                     "loss soonest (or off).",
                         epilog="examples:\n  dropbp advise smollm2-alpaca --device cpu --budget 5\n"
                                "  dropbp advise tiny-tasks --drop-rates 0.5 --allocations uniform,depth")
    parser.add_argument("recipe_name", metavar="RECIPE", nargs="?", default=None,
                        help="a shipped recipe (dropbp recipes ls) or a recipe file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
