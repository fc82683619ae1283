"""The one study runner behind every time-to-accuracy benchmark (convergence, regime, recipe-time): contenders x
learning rates x seeds on a :class:`Workload`, the step-time model as the one clock, one equal-time rule and one
typed :class:`Verdict` per contender and seed. Finished runs and the clock's calibration are cached as JSON when a
cache folder is given, so an interrupted study continues where it stopped."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dropbp.recipes.for_benchmarks import write_text_atomic

from ..harness import StudySettings, TrainRun, holds, speedup_to
from ..step_time_model import CALIBRATION_RATES, StepTimeModel, fit_step_time
from .contender import Contender

#: Times ``n`` more optimizer steps of one configuration: each step's (seconds, training FLOPs).
Timer = Callable[[int], list[tuple[float, float]]]


@dataclasses.dataclass
class StudyRun(TrainRun):
    """One run of a study: its contender (label and kind), learning rate (None: the workload's own) and seed; the
    step clock's total where the times are the step-time model's; and what the workload says about it (``notes``)."""

    kind: str = "baseline"
    rate: float = 0.0
    lr: float | None = None
    seed: int = 0
    measured_time_s: float | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def final_exact_match(self) -> float | None:
        """The exact match at the last evaluation (None where the workload does not measure it)."""
        return self.curve[-1].exact_match

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "final_exact_match": self.final_exact_match}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyRun":
        """The run back from :meth:`to_dict`. Results written before the one runner read the same: a contender's
        group was ``family``, the regime study kept ``epochs`` beside the run, and the first studies kept no realised
        drop fraction (0) or totals (the last curve point's)."""
        last = data["curve"][-1]
        data = {"steps": last["step"], "train_time_s": last["time_s"], "train_flops": last["flops"],
                "realized_drop_fraction": 0.0, **data}
        if "kind" not in data and "family" in data:
            data["kind"] = data["family"]
        if "epochs" in data:
            data["notes"] = {"epochs": data["epochs"], **data.get("notes", {})}
        return super().from_dict(data)  # type: ignore[return-value]


class Workload(Protocol):
    """What a study trains: one run of a contender, and a timer of its steps for the clock."""

    def train(self, contender: Contender, lr: float | None, seed: int, steps: int, *, progress: bool) -> StudyRun:
        """Fine-tune ``contender`` for ``steps`` optimizer steps (its schedules spanning them); its curve's times by
        the step clock."""

    def timer(self, contender: Contender) -> Timer:
        """A timer of ``contender``'s optimizer steps (untimed warm-up steps are its own business)."""


class PlansRates(Protocol):
    """A workload that can say, before training, the drop rate each step of a run targets (a share of the FLOPs
    DropBP can drop, as a uniform rate drops): what a study needs to plan a contender's steps at the baseline's time
    without training it at the baseline's steps first."""

    def planned_rates(self, contender: Contender, steps: int) -> list[float]:
        """The drop rate ``contender`` targets at each of the ``steps`` steps of a run that long."""


# -- the one clock --------------------------------------------------------------------------------------------------
#: Rounds of the calibration, and timed steps per configuration and round, unless a study says otherwise.
CALIBRATION = (5, 6)


def calibrate(timers: dict[str, Timer], own_scale: set[str], *, rounds: int = CALIBRATION[0],
              steps: int = CALIBRATION[1]) -> StepTimeModel:
    """Time every configuration in interleaved rounds of ``steps`` steps and fit the step-time model. A
    configuration's time is the median over rounds of a round's mean step time (a mean, because its FLOPs per step
    are a mean too: a random mask makes step times scatter about it); labels in ``own_scale`` get their own factor
    on the line."""
    seconds: dict[str, list[float]] = {label: [] for label in timers}
    flops: dict[str, list[float]] = {label: [] for label in timers}
    for _ in range(rounds):
        for label, timer in timers.items():
            timed = timer(steps)
            seconds[label].append(statistics.fmean(s for s, _ in timed))
            flops[label].append(statistics.fmean(f for _, f in timed))
    return fit_step_time([{"label": label, "flops": statistics.fmean(flops[label]),
                           "seconds": statistics.median(seconds[label]), "timed_steps": rounds * steps,
                           "own_scale": label in own_scale} for label in timers])


def calibration_contenders(contenders: Sequence[Contender]) -> list[Contender]:
    """What the clock times: exact backprop, uniform DropBP at :data:`CALIBRATION_RATES` (every DropBP contender,
    whatever its rate policy, is read off that line by its FLOPs), and every other technique as itself."""
    base = next((c for c in contenders if c.is_baseline), Contender("baseline"))
    dropbp = [Contender(f"DropBP p={rate:g}", "dropbp", "dropbp", rate) for rate in CALIBRATION_RATES]
    return [base, *dropbp, *[c for c in contenders if not c.on_dropbp_line]]


def modelled(run: StudyRun, model: StepTimeModel) -> StudyRun:
    """``run`` with its times read through ``model`` (every curve point and the total); the step clock's total is
    kept as ``measured_time_s``."""
    curve = [dataclasses.replace(point, time_s=model.seconds(point.step, point.flops, run.label))
             for point in run.curve]
    measured = run.measured_time_s if run.measured_time_s is not None else run.train_time_s
    return dataclasses.replace(run, curve=curve, train_time_s=model.seconds(run.steps, run.train_flops, run.label),
                               measured_time_s=measured)


# -- the one equal-time rule ------------------------------------------------------------------------------------------
#: A contender whose equal-time step count is within this share of its equal-steps count keeps that run.
SAME_LENGTH = 0.05


def equal_time_steps(steps: int, base_time: float, own_time: float, max_factor: float | None = None) -> int:
    """Steps a contender that took ``own_time`` for ``steps`` trains in the baseline's ``base_time`` (at most
    ``max_factor`` times ``steps``)."""
    count = max(1, round(steps * base_time / own_time))
    return count if max_factor is None else min(count, max(1, int(steps * max_factor)))


def planned_equal_time_steps(workload: PlansRates, contender: Contender, model: StepTimeModel,
                             clocked: Sequence[Contender], base_time: float, steps: int,
                             max_factor: float | None = None) -> int:
    """Steps whose modelled time comes nearest the baseline's ``base_time``, planned before training: a DropBP
    contender's FLOPs per step from its planned drop rate through the calibration's FLOPs-against-rate line (exact
    backprop and the uniform rates of ``clocked``, timed for ``model``), any other technique's from its own
    calibration point. Starts from the equal-time rule's guess at the rate of ``steps`` steps and walks to the
    nearest count (at most ``max_factor`` times ``steps``)."""
    points = {p["label"]: float(p["flops"]) for p in model.points}
    if not contender.on_dropbp_line:
        per_step = points[contender.label]

        def seconds(count: int) -> float:
            return model.seconds(count, count * per_step, contender.label)
    else:
        on_line = [c for c in clocked if c.on_dropbp_line]
        line = statistics.linear_regression([0.0 if c.is_baseline else c.rate for c in on_line],
                                            [points[c.label] for c in on_line])

        def seconds(count: int) -> float:
            rates = workload.planned_rates(contender, count)
            return model.seconds(count, sum(line.intercept + line.slope * r for r in rates))
    cap = max(1, int(steps * max_factor)) if max_factor is not None else None
    count = equal_time_steps(steps, base_time, seconds(steps), max_factor)
    while count > 1 and seconds(count) > base_time:
        count -= 1
    while (cap is None or count < cap) and seconds(count + 1) <= base_time:
        count += 1
    if (cap is None or count < cap) and abs(seconds(count + 1) - base_time) < abs(seconds(count) - base_time):
        count += 1
    return count


# -- the one verdict --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Verdict:
    """A contender's run against the baseline of the same seed: whether it holds (validation loss and exact match
    within the margins of :func:`~dropbp.benchmarks.harness.holds`), the loss ratio and exact-match gap, and how many
    times sooner it reaches the baseline's final loss and exact match (None: never)."""

    label: str
    seed: int
    holds: bool
    loss_ratio: float
    match_gap: float | None
    loss_speedup: float | None
    match_speedup: float | None

    @classmethod
    def of(cls, run: StudyRun, base: StudyRun, **margins: float) -> "Verdict":
        """``run`` judged against ``base`` (``margins``: ``loss_margin``, ``match_margin`` other than the
        defaults)."""
        match, base_match = run.final_exact_match, base.final_exact_match
        gap = None if match is None or base_match is None else match - base_match
        return cls(run.label, run.seed, holds(run.final_val_loss, base.final_val_loss, match, base_match, **margins),
                   run.final_val_loss / base.final_val_loss, gap,
                   speedup_to(run.curve, base.curve, base.final_val_loss),
                   None if base_match is None else speedup_to(run.curve, base.curve, base_match, "exact_match", False))


@dataclasses.dataclass
class Study:
    """A finished study: the learning-rate sweep (seed 0) and each contender's chosen rate, the runs at equal steps
    and at the baseline's time (a contender that is not faster or slower keeps its equal-steps run there), and the
    clock's model (None: each run's own step clock)."""

    contenders: list[Contender]
    sweep: dict[str, list[StudyRun]]
    chosen_lr: dict[str, float | None]
    runs: list[StudyRun]
    equal_time_runs: list[StudyRun]
    time_model: StepTimeModel | None

    def baseline(self, seed: int) -> StudyRun:
        """The baseline's run of ``seed``."""
        return next(r for r in self.runs if r.kind == "baseline" and r.seed == seed)

    def at_equal_time(self, label: str) -> list[StudyRun]:
        """``label``'s runs at the baseline's time, one per seed."""
        return [r for r in self.equal_time_runs if r.label == label]

    def verdicts(self) -> list[Verdict]:
        """Every contender's verdict per seed, at the baseline's time."""
        return [Verdict.of(run, self.baseline(run.seed)) for run in self.equal_time_runs if run.kind != "baseline"]


def _cached(folder: Path | None, key: str, make: Callable[[], Any], read: Callable[[dict[str, Any]], Any]) -> Any:
    if folder is None:
        return make()
    path = folder / f"{key.split('|', 1)[0]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return read(json.loads(path.read_text()))
    made = make()
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(made.to_dict()))
    return made


def run_study(workload: Workload, contenders: Sequence[Contender], *, steps: int, lrs: Sequence[float | None] = (None,),
              seeds: Sequence[int] = (0,), time_model: bool = True, equal_time: bool = True,
              equal_steps: bool = True, max_factor: float | None = None, timed: Sequence[Contender] | None = None,
              cache: Path | None = None, calibration: tuple[int, int] = CALIBRATION, progress: bool = True) -> Study:
    """Sweep ``lrs`` on the first seed (when there are several), keep each contender's best by final validation
    loss, train every seed at it for ``steps``; fit the clock to ``timed`` (default :func:`calibration_contenders`
    of ``contenders``, in ``calibration`` = (rounds, steps per round)) and read every run's time through it; then
    train each contender again for the baseline's time (:func:`equal_time_steps`). ``equal_steps=False`` trains the
    contenders at the baseline's time only, their steps planned from the clock and the drop rates they target
    (:func:`planned_equal_time_steps`; the workload must be :class:`PlansRates`, the clock the step-time model):
    each contender's run at the baseline's steps is then not made, and its learning rates are swept at its planned
    count, so that it is judged at the rate that serves it best in the baseline's time. ``cache``: a folder where
    finished runs and the clock are kept."""
    if not equal_steps and not (time_model and equal_time and hasattr(workload, "planned_rates")):
        raise ValueError("equal_steps=False needs the step-time model, the equal-time runs and a workload that "
                         "plans its drop rates (PlansRates).")
    made: dict[str, StudyRun] = {}

    def run(contender: Contender, lr: float | None, seed: int, count: int) -> StudyRun:
        key = f"run|{contender!r}|{lr!r}|{seed}|{count}"
        if key not in made:  # a run the sweep made is not trained again for the seeds, cache or not
            made[key] = _cached(cache, key, lambda: workload.train(contender, lr, seed, count, progress=progress),
                                StudyRun.from_dict)
        return made[key]

    sweep: dict[str, list[StudyRun]] = {}
    chosen: dict[str, float | None] = {}

    def sweep_at(contender: Contender, count: int) -> None:  # seed 0 at every rate; the best is kept
        sweep[contender.label] = [run(contender, lr, seeds[0], count) for lr in lrs] if len(lrs) > 1 else []
        chosen[contender.label] = (min(sweep[contender.label], key=lambda r: r.final_val_loss).lr
                                   if len(lrs) > 1 else lrs[0])

    for contender in contenders:
        if equal_steps or contender.is_baseline:  # without equal steps, a contender sweeps at its planned count
            sweep_at(contender, steps)
    runs = [run(c, chosen[c.label], seed, steps) for c in contenders for seed in seeds
            if equal_steps or c.is_baseline]
    model = None
    if time_model:
        clocked = calibration_contenders(timed if timed is not None else contenders)
        key = "step-time|" + "|".join(repr(c) for c in clocked)
        key += "" if calibration == CALIBRATION else f"|rounds={calibration[0]}|steps={calibration[1]}"
        rounds, per_round = calibration
        model = _cached(cache, key, lambda: calibrate({c.label: workload.timer(c) for c in clocked},
                                                      {c.label for c in clocked if not c.on_dropbp_line},
                                                      rounds=rounds, steps=per_round),
                        StepTimeModel.from_dict)
        runs = [modelled(r, model) for r in runs]
    longer: list[StudyRun] = []
    if equal_time:
        base_time = statistics.fmean(r.train_time_s for r in runs if r.kind == "baseline")
        for contender in contenders:
            mine = [r for r in runs if r.label == contender.label]
            if not mine:  # not trained at the baseline's steps: planned, and its rates swept there
                count = planned_equal_time_steps(workload, contender, model, clocked, base_time, steps, max_factor)
                sweep_at(contender, count)
            else:
                count = equal_time_steps(steps, base_time, statistics.fmean(r.train_time_s for r in mine), max_factor)
            if mine and (contender.is_baseline or abs(count - steps) <= SAME_LENGTH * steps):
                longer += mine
                continue
            again = [run(contender, chosen[contender.label], seed, count) for seed in seeds]
            longer += [modelled(r, model) for r in again] if model is not None else again
    return Study(list(contenders), sweep, chosen, runs, longer, model)


def study_dict(study: Study) -> dict[str, Any]:
    """The study's part of a result file: sweep, chosen rates, runs, equal-time runs, verdicts and the clock."""
    return {"sweep": {label: [{"lr": r.lr, "final_val_loss": r.final_val_loss,
                               "final_exact_match": r.final_exact_match} for r in runs]
                      for label, runs in study.sweep.items()},
            "chosen_lr": study.chosen_lr, "runs": [r.to_dict() for r in study.runs],
            "equal_time_runs": [r.to_dict() for r in study.equal_time_runs],
            "verdicts": [dataclasses.asdict(v) for v in study.verdicts()],
            "step_time_model": None if study.time_model is None else study.time_model.to_dict()}


#: The version of the one result shape every defined study writes.
SCHEMA = 1


def study_result(name: str, settings: StudySettings, study: Study, extras: dict[str, Any]) -> dict[str, Any]:
    """The one result shape: the benchmark's name, the schema version, the options, the study and its extras."""
    verdicts = [Verdict.of(run, study.baseline(run.seed), **settings.margins())
                for run in study.equal_time_runs if run.kind != "baseline"]
    made = study_dict(study)
    made["verdicts"] = [dataclasses.asdict(v) for v in verdicts]
    return {"benchmark": name, "schema": SCHEMA, "options": settings.to_dict(), "study": made, "extras": extras}
