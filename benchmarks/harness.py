"""What every benchmark shares: the settings every run has (device, seed, results folder); one runner that validates,
measures on the chosen backend and publishes the JSON, Markdown and PNG; the cache of pre-trained base models; and
the typed record of a training run (:class:`TrainRun`, its :class:`CurvePoint` evaluations), which becomes JSON only
at the edge (:meth:`TrainRun.to_dict`)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from dropbp import backends
from dropbp.backends import Backend
from dropbp.recipes.for_benchmarks import (NON_NEGATIVE, NON_NEGATIVE_NUMBER, POSITIVE, SOME_POSITIVE_NUMBERS,
                                           CommandSettings, Naming, Problems, Rule, cache_root, check_model,
                                           check_number, drop_rates_field, method_field, model_field, option_name,
                                           precision_field, publish, resolve_model, results_folder, setting,
                                           write_text_atomic)

S = TypeVar("S", bound="BenchSettings")


@dataclasses.dataclass
class BenchSettings(CommandSettings):
    """Fields every benchmark has (device, seed, results folder; checked as every command's). Subclasses add their
    own and extend :meth:`check` / :meth:`resolve`."""

    def resolve(self: S, backend: type[Backend]) -> S:
        """A copy with every ``auto`` value replaced by what it means on ``backend``."""
        return dataclasses.replace(self)

    def results_dir(self, backend_name: str) -> Path:
        """``out``, or ``results/<device>``; refused when it cannot hold results."""
        return results_folder(self.out, backend_name)


#: A contender *holds* when it ends at most this much above the baseline's validation loss (relative) and this much
#: below its exact match (absolute): the one definition every time-to-accuracy study uses.
HOLDS_LOSS_MARGIN, HOLDS_MATCH_MARGIN = 0.03, 0.02


#: A step limit: at least 1 (none: no limit).
STEP_FACTOR = Rule("finite number >= 1, or none", lambda name, value: check_number(name, value, low=1))


@dataclasses.dataclass
class StudySettings(BenchSettings):
    """The fields of every time-to-accuracy study (the one study runner's clock and threads), declared once."""

    threads: int = setting(1, "CPU threads for every run (0: PyTorch's default; 1 lets the step clock be the "
                              "training thread's CPU time)", allowed=NON_NEGATIVE)
    time_model: bool = setting(True, "read every run's time through a step-time model (seconds per step = a + b x "
                                     "FLOPs), fitted to the study's configurations timed in interleaved rounds, so "
                                     "machine load during one run does not move its time; false: each run's own "
                                     "step clock")
    calibration_rounds: int = setting(5, "rounds of the step-time model's calibration (each configuration timed once "
                                         "per round; its time is the median over rounds)", allowed=POSITIVE)
    calibration_steps: int = setting(6, "timed steps per configuration and round of that calibration",
                                     allowed=POSITIVE)
    lrs: tuple[float, ...] = setting((), "learning rates swept on the first seed, each contender then trained on "
                                         "every seed at its own best (lowest final validation loss); none: the "
                                         "workload's own", allowed=SOME_POSITIVE_NUMBERS)
    equal_time: bool = setting(True, "then train each contender whose time differs from the baseline's by more "
                                     "than 5% again for the baseline's time, and judge it there")
    max_step_factor: float | None = setting(None, "a contender's run at the baseline's time takes at most this many "
                                                  "times the baseline's steps (none: no limit)",
                                            allowed=STEP_FACTOR)
    loss_margin: float = setting(HOLDS_LOSS_MARGIN, "a contender holds when it ends at most this much above the "
                                                    "baseline's validation loss (relative)",
                                 allowed=NON_NEGATIVE_NUMBER)
    match_margin: float = setting(HOLDS_MATCH_MARGIN, "and at most this much below its exact match (absolute)",
                                  allowed=NON_NEGATIVE_NUMBER)

    def calibration(self) -> tuple[int, int]:
        """Rounds and timed steps per round of the step-time model's calibration."""
        return self.calibration_rounds, self.calibration_steps

    def runner_options(self) -> dict[str, Any]:
        """What :func:`~dropbp.benchmarks.study.run_study` takes from these settings, the same for every study:
        the learning rates, the clock and its calibration, the equal-time rule and its step limit."""
        return {"lrs": self.lrs or (None,), "time_model": self.time_model, "equal_time": self.equal_time,
                "max_factor": self.max_step_factor, "calibration": self.calibration()}

    def margins(self) -> dict[str, float]:
        """The verdict's margins, as :meth:`~dropbp.benchmarks.study.Verdict.of` takes them."""
        return {"loss_margin": self.loss_margin, "match_margin": self.match_margin}


@dataclasses.dataclass
class ModelBenchSettings(BenchSettings):
    """The workload shared by the benchmarks that measure one model at several drop rates (throughput, memory):
    model, method, drop rates and precision, with their checks and what ``auto`` means on a device."""

    model: str = model_field("auto")
    method: str = method_field()
    drop_rates: tuple[float, ...] = drop_rates_field()
    precision: str = precision_field()

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        p.check(check_model, self.model, name("model"))

    def resolve(self: S, backend: type[Backend]) -> S:
        """``auto`` model and precision as they are on ``backend``."""
        return dataclasses.replace(self, model=resolve_model(self.model, backend),
                                   precision=backend.resolve_precision(self.precision))


def run_benchmark(name: str, settings: S, measure: Callable[..., dict[str, Any]],
                  markdown: Callable[[dict[str, Any]], str], figure: Callable[[dict[str, Any]], Any], *,
                  progress: bool = True) -> dict[str, Any]:
    """Validate ``settings``, pick the backend, ``measure(settings, backend, progress=...)``, then write
    ``NAME.json``, ``NAME.md`` and ``NAME.png`` under the results folder and print the table. Returns the result."""
    settings.validate()
    backend_class = backends.resolve(settings.device)
    settings = settings.resolve(backend_class)
    settings.validate()
    out = settings.results_dir(backend_class.name)
    backend = backend_class()
    result = measure(settings, backend, progress=progress)
    publish(out, name, result, markdown(result), figure(result))
    return result


def step_clock(backend: Backend) -> tuple[Callable[[], float], str]:
    """The clock a benchmark times training steps with, and its name for reports. On the CPU with one PyTorch
    thread, the calling thread's CPU time: all of a step's compute runs on that thread, and another process on the
    machine does not inflate it (so two single-thread studies can share two cores). Elsewhere wall time (the caller
    synchronises the device around what it times)."""
    if backend.name == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time, "CPU time of the one training thread"
    return time.perf_counter, "wall time"


# -- pre-trained base models, cached ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where pre-trained models and finished runs are cached: the project's one cache folder (``DROPBP_CACHE``
    overrides ``~/.cache/dropbp``), which also holds converted GGUF models."""
    return cache_root()


def save_state(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Write ``model``'s weights to ``path`` (safetensors, via a temporary file, so a killed run leaves no part of a
    cache file) and return them as CPU tensors (a tied head is stored once, as the embedding)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with the embedding; safetensors stores each tensor once
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    return state


def digest(described: Any) -> str:
    """The one cache key: the first 16 hex digits of the SHA-256 of ``described`` as JSON (mapping keys sorted)."""
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_versions(described: dict[str, Any]) -> dict[str, Any]:
    """``described`` with the Python and torch versions (what every cached model or run also depends on)."""
    return {**described, "python": platform.python_version(), "torch": torch.__version__}


def cache_key(described: dict[str, Any]) -> str:
    """The key of everything a cached result depends on, the Python and torch versions included."""
    return digest(with_versions(described))


def runs_folder(study: str, described: Any) -> Path:
    """Where a study keeps its finished runs and its clock, so that a stopped study resumes where it was (the one
    policy of every study that caches runs): ``studies/STUDY-KEY`` in the cache folder, KEY the :func:`digest` of
    what its runs depend on."""
    return cache_dir() / "studies" / f"{study}-{digest(described)}"


def cached_pretraining(name: str, described: dict[str, Any], model: torch.nn.Module,
                       train: Callable[[torch.nn.Module], dict[str, Any]]) -> tuple[dict[str, torch.Tensor],
                                                                                   dict[str, Any]]:
    """The weights of ``model`` after ``train(model)`` (which trains it in place and returns facts about the run),
    and those facts with ``from_cache``: read from the cache when the same ``described`` settings were trained
    before, else trained now and cached (weights and facts each written atomically)."""
    from safetensors.torch import load_file

    path = cache_dir() / f"{name}-{cache_key(described)}.safetensors"
    facts_path = path.with_suffix(".json")
    if path.exists() and facts_path.exists():
        return load_file(str(path)), {**json.loads(facts_path.read_text()), "from_cache": True}
    facts = {**train(model), "cache_file": str(path)}
    state = save_state(model, path)
    write_text_atomic(facts_path, json.dumps(facts))
    return state, {**facts, "from_cache": False}


# -- the record of a training run ------------------------------------------------------------------------------------
@dataclasses.dataclass
class CurvePoint:
    """One evaluation during a run: where (step, seconds of training, training FLOPs) and what (validation loss;
    examples seen and exact match where the benchmark measures them)."""

    step: int
    time_s: float
    flops: float
    val_loss: float
    examples: int | None = None
    exact_match: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the fields the benchmark does not measure."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def time_to(curve: list[CurvePoint], target: float, axis: str = "time_s", metric: str = "val_loss",
            lower_is_better: bool = True) -> float | None:
    """First point on ``axis`` (``time_s``, ``flops``, ``step``) where ``metric`` (the validation loss, or e.g.
    ``exact_match`` with ``lower_is_better=False``) reaches ``target`` (linear between evaluations); None when it
    never does."""
    def reached(point: CurvePoint) -> bool:
        value = getattr(point, metric)
        return value <= target if lower_is_better else value >= target

    for before, after in zip(curve, curve[1:]):
        if reached(after):
            if reached(before):
                return getattr(before, axis)
            start, end = getattr(before, metric), getattr(after, metric)
            frac = (start - target) / (start - end)
            return getattr(before, axis) + frac * (getattr(after, axis) - getattr(before, axis))
    return None




def holds(loss: float, base_loss: float, match: float | None = None, base_match: float | None = None, *,
          loss_margin: float = HOLDS_LOSS_MARGIN, match_margin: float = HOLDS_MATCH_MARGIN) -> bool:
    """Whether a run that ended at ``loss`` (and exact match ``match``, when measured) holds against a baseline that
    ended at ``base_loss`` (``base_match``)."""
    matched = match is None or base_match is None or match >= base_match - match_margin
    return loss <= base_loss * (1 + loss_margin) and matched


def speedup_to(curve: list[CurvePoint], base_curve: list[CurvePoint], target: float, metric: str = "val_loss",
               lower_is_better: bool = True) -> float | None:
    """How many times sooner than the baseline a run reaches ``target`` on ``metric``: the baseline's time to it
    over the run's (None when either never reaches it)."""
    mine, theirs = (time_to(c, target, "time_s", metric, lower_is_better) for c in (curve, base_curve))
    return theirs / mine if mine and theirs else None


@dataclasses.dataclass
class TrainRun:
    """One training run of a benchmark: its label, totals and learning curve. Benchmarks subclass it with what
    identifies their runs (technique, rate, learning rate, seed, ...)."""

    label: str
    steps: int
    train_time_s: float
    train_flops: float
    curve: list[CurvePoint]
    realized_drop_fraction: float

    @property
    def final_val_loss(self) -> float:
        """The validation loss at the last evaluation."""
        return self.curve[-1].val_loss

    @property
    def best_val_loss(self) -> float:
        """The lowest validation loss of any evaluation."""
        return min(point.val_loss for point in self.curve)

    def to_dict(self) -> dict[str, Any]:
        """The run as its result files hold it: every field, the curve as a list of mappings, and the final loss."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["curve"] = [point.to_dict() for point in self.curve]
        out["final_val_loss"] = self.final_val_loss
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainRun":
        """The run back from :meth:`to_dict` (keys that are not fields, such as derived numbers, are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["curve"] = [CurvePoint(**point) for point in data["curve"]]
        return cls(**values)
