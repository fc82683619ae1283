"""The regime study's clock: a step-time model (seconds = a + b * FLOPs per step) fitted to the study's own
configurations timed in interleaved rounds, and each run's times read through it.

The baseline is timed as itself, DropBP as uniform DropBP at a few rates (every DropBP contender, whatever its
rate policy, is read by its FLOPs), and every other technique (freezing, freezing + DropBP, LayerDrop, PLD) as
itself: their time per FLOP may differ from DropBP's, so the line is fitted to the baseline and DropBP and each of
them gets its own factor on it. A run's time at step ``s`` of its curve is then ``a * s + b * (its FLOPs so far)``
(times its technique's factor), where its FLOPs come from the FLOPs model step by step (the masks it drew, the
rates it used).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.recipes import write_text_atomic

from ..harness import step_clock
from ..step_time_model import CALIBRATION_RATES, StepTimeModel, fit_step_time, time_interleaved
from .report import RegimeRun
from .settings import FAMILIES, Contender, RegimeSettings, plan
from .trainer import DROPBP_FAMILIES, batch_indices, prepare


def calibration_contenders(settings: RegimeSettings, num_layers: int, total_steps: int) -> list[Contender]:
    """What is timed: the baseline, uniform DropBP at :data:`CALIBRATION_RATES`, and every other technique the
    study could run (freezing, freezing + DropBP, LayerDrop, PLD, at ``contender_rate``) as itself. The list
    depends only on settings that key the run cache, not on which contenders a study names, so a study of fewer
    contenders reads its runs through the same model and reuses every run it shares with a larger one."""
    every = plan(dataclasses.replace(settings, contenders=FAMILIES), num_layers, total_steps)
    others = [c for c in every if c.family not in ("baseline", "dropbp", *DROPBP_FAMILIES)]
    dropbp = [Contender(f"DropBP p={rate:g}", "dropbp", rate) for rate in CALIBRATION_RATES]
    return [Contender("baseline", "baseline"), *dropbp, *others]


def clock_description(backend: Backend, time_model: StepTimeModel | None) -> str:
    """How the study's times were taken, for the report."""
    measured = step_clock(backend)[1]
    if time_model is None:
        return measured
    return (f"step-time model's ({time_model.formula()}, fitted to {len(time_model.points)} configurations timed "
            f"in interleaved rounds by the {measured}; worst fit error {time_model.worst_error() * 100:.1f}%)")


def calibrate(settings: RegimeSettings, state: dict[str, torch.Tensor], data: Any, backend: Backend,
              contenders: list[Contender], *, rounds: int = 5, steps: int = 6) -> StepTimeModel:
    """Time every one of ``contenders`` (seed 0, the sweep's middle learning rate) in interleaved rounds and fit
    the step-time model to the medians."""
    lr = sorted(settings.lrs)[len(settings.lrs) // 2]
    total = rounds * steps + 2
    order = torch.randperm(len(data.train_ids), generator=torch.Generator().manual_seed(0))
    trainers = {c.label: prepare(c, lr, 0, settings, state, backend, total) for c in contenders}

    def stepper(trainer: Any) -> Any:
        def run(step: int) -> float:
            index = batch_indices(order, step, settings.batch_size)
            return trainer.step(step, data.train_ids[index], data.train_labels[index])[1]
        return run

    clock, _ = step_clock(backend)
    points = time_interleaved({label: stepper(t) for label, t in trainers.items()}, clock, rounds=rounds,
                              steps=steps, synchronize=backend.synchronize)
    dropbp = {c.label for c in contenders if c.family in ("baseline", "dropbp")}
    for point in points:  # the line is DropBP's; every other technique gets its own factor on it
        point["own_scale"] = point["label"] not in dropbp
    for trainer in trainers.values():
        trainer.close()
    return fit_step_time(points)


def cached_calibration(folder: Path, settings: RegimeSettings, state: dict[str, torch.Tensor], data: Any,
                       backend: Backend, total_steps: int) -> StepTimeModel:
    """:func:`calibrate` over :func:`calibration_contenders`, once per run cache (kept beside the runs, keyed by
    what is timed)."""
    contenders = calibration_contenders(settings, settings.model_overrides["num_hidden_layers"], total_steps)
    labels = "|".join(c.label for c in contenders)
    path = folder / f"step-time-{hashlib.sha256(labels.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return StepTimeModel.from_dict(json.loads(path.read_text()))
    model = calibrate(settings, state, data, backend, contenders)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(model.to_dict()))
    return model


def modelled(run: RegimeRun, model: StepTimeModel) -> RegimeRun:
    """``run`` with its times read through ``model`` (every curve point and the total); the step clock's total is
    kept as ``measured_time_s``."""
    curve = [dataclasses.replace(point, time_s=model.seconds(point.step, point.flops, run.label))
             for point in run.curve]
    measured = run.measured_time_s if run.measured_time_s is not None else run.train_time_s
    return dataclasses.replace(run, curve=curve, train_time_s=model.seconds(run.steps, run.train_flops, run.label),
                               measured_time_s=measured)
