"""A new study is a settings class and a workload function: :func:`define_study` makes it a ``dropbp bench``
benchmark with the one study runner, one result schema (the study's part under ``study``, its own under
``extras``), one report and one figure.

The workload function gets the validated settings and the backend and returns a :class:`StudyPlan`: what trains
(a :class:`~dropbp.benchmarks.study.Workload`), the contenders (the baseline first) and the steps at which they are
compared; the runner's knobs (learning rates, the clock, equal time, the step limit, margins) come from
:class:`~dropbp.benchmarks.harness.StudySettings`, which the settings class extends, and the seeds from its
``seeds`` field (else its ``seed``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dropbp.backends import Backend
from dropbp.recipes.for_benchmarks import markdown_table, pyplot

from .harness import StudySettings, run_benchmark
from .registry import register_benchmark
from .study import Contender, Workload, run_study, study_result

S = TypeVar("S", bound=StudySettings)

@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """What a study trains (``workload``), against what (``contenders``, the baseline first), for how many
    optimizer steps, and anything of its own to keep in the result (``extras``)."""

    workload: Workload
    contenders: Sequence[Contender]
    steps: int
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def _times(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}x"


def study_markdown(result: dict[str, Any]) -> str:
    """Each contender per seed against the baseline at the baseline's time: loss ratio, exact-match gap, how much
    sooner it reaches the baseline's final loss, and whether it holds the margins."""
    options = result["options"]
    rows = [(v["label"], v["seed"], f"{(v['loss_ratio'] - 1) * 100:+.2f}%",
             "-" if v["match_gap"] is None else f"{v['match_gap'] * 100:+.1f}", _times(v["loss_speedup"]),
             "yes" if v["holds"] else "no") for v in result["study"]["verdicts"]]
    held = sum(v["holds"] for v in result["study"]["verdicts"])
    return "\n".join([
        f"# {result['benchmark']}: contenders against the baseline at the baseline's time", "",
        f"Margins: validation loss at most +{options['loss_margin'] * 100:g}%, exact match at most "
        f"-{options['match_margin'] * 100:g} points. {held} of {len(rows)} contender runs hold.", "",
        markdown_table(["contender", "seed", "val loss vs baseline", "exact match (points)", "sooner to target",
                        "holds"], rows)])


def study_figure(result: dict[str, Any]) -> Any:
    """Validation loss against (modelled) training time, one line per run at the baseline's time."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in result["study"]["equal_time_runs"]:
        ax.plot([p["time_s"] for p in run["curve"]], [p["val_loss"] for p in run["curve"]], "o-", ms=3,
                label=f"{run['label']} (seed {run['seed']})")
    ax.set(xlabel="training time (s)", ylabel="validation loss", title=result["benchmark"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def define_study(name: str, settings_class: type[S], make_workload: Callable[[S, Backend], StudyPlan],
                 help_text: str) -> Callable[..., dict[str, Any]]:
    """Register the study ``name`` with ``dropbp bench`` and return its ``main(settings, progress=True)``, which
    writes ``NAME.{json,md,png}``."""
    if not issubclass(settings_class, StudySettings):
        raise TypeError(f"study {name!r}: its settings class must extend StudySettings (the runner's knobs).")

    def measure(settings: S, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
        plan = make_workload(settings, backend)
        seeds = tuple(getattr(settings, "seeds", ()) or (settings.seed,))
        study = run_study(plan.workload, plan.contenders, steps=plan.steps, seeds=seeds, progress=progress,
                          **settings.runner_options())
        return study_result(name, settings, study, plan.extras)

    def main(settings: S, *, progress: bool = True) -> dict[str, Any]:
        return run_benchmark(name, settings, measure, study_markdown, study_figure, progress=progress)

    main.__doc__ = f"``dropbp bench {name}``: {help_text}."
    register_benchmark(name, settings_class, main, help_text)
    return main
