"""What the probe measures: a model with its loss, its training batches and its FLOPs model, from a recipe (what
``dropbp advise`` takes) or from a regime study's config (the toy regimes the advice is validated on)."""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.backends import Backend
from dropbp.core.seeding import seeded
from dropbp.core.step_flops import StepFlops
from dropbp.recipes.for_benchmarks import (FineTune, Problems, build, causal_lm_loss, find_recipe, load_recipe,
                                           read_yaml)

from ..regime.run import TaskWorkload, batch_indices, pretrained_state, steps_per_run, task_data
from ..regime.settings import RegimeSettings
from ..study import Contender
from .probe import LossFn


@dataclass
class Target:
    """A model ready to probe: ``batch(k)`` is the k-th training batch after the exact steps already trained (as
    ``loss_fn`` takes it), ``model_inputs(batch)`` the same as the model's keyword inputs (for sensitivities)."""

    name: str
    method: str
    model: nn.Module
    loss_fn: LossFn
    batch: Callable[[int], Any]
    model_inputs: Callable[[Any], Any]
    flops_model: StepFlops
    seq_len: int


def _inputs(backend: Backend) -> Callable[[Any], dict[str, torch.Tensor]]:
    return lambda b: {"input_ids": b[0].to(backend.device), "labels": b[1].to(backend.device)}


@contextlib.contextmanager
def recipe_target(recipe_name: str, overrides: list[str] | tuple[str, ...], backend: Backend, *, seed: int,
                  after_steps: int = 0, progress: bool = True) -> Iterator[Target]:
    """The recipe with DropBP off (its model, adapters, data, labels and loss), after ``after_steps`` exact steps of
    its own training; nothing of its run folder is kept."""
    keys = [*overrides, "dropbp.drop_rate=0", "dropbp.technique=dropbp", "train.eval_every=0", "train.exact_match=0",
            f"train.seed={seed}"]
    if after_steps:
        keys.append(f"train.stop_after_steps={after_steps}")
    recipe = load_recipe(find_recipe(recipe_name), keys, device=backend.name)
    with tempfile.TemporaryDirectory() as scratch:
        job = FineTune(recipe, Path(scratch) / "run", progress=progress)
        job.setup()
        try:
            if after_steps:
                job.train()
            size = recipe.train.micro_batch_size
            yield Target(recipe_name, recipe.model.method, job.model, job.loss_fn,
                         lambda k: job.data.batch(after_steps + k, 0, 1, size, 0, 1), _inputs(backend),
                         job.flops_model, recipe.data.seq_len)
        finally:
            job.cleanup()


@contextlib.contextmanager
def regime_target(config: str | Path, backend: Backend, *, seed: int, after_steps: int = 0,
                  progress: bool = True) -> Iterator[Target]:
    """A regime study's pre-trained toy model (cached pre-training) with its adapters on its task data, as the
    study's DropBP-off runs start, after ``after_steps`` exact steps at the study's middle learning rate."""
    data_file = read_yaml(config)
    if data_file.get("benchmark") != "regime":
        raise ValueError(f"{config}: a regime study's config is needed here, got {data_file.get('benchmark')!r}.")
    problems = Problems(str(config))
    settings = build(RegimeSettings, data_file.get("regime") or {}, problems, "regime")
    problems.raise_if_any()
    with seeded(settings.seed):
        state, _ = pretrained_state(settings, backend, progress)
    data = task_data(settings.seq_len, settings.family, settings.regime)
    workload = TaskWorkload(settings, state, data, backend)
    lrs = sorted(settings.lrs)
    trainer = workload.trainer(Contender("DropBP off"), lrs[len(lrs) // 2], seed, steps_per_run(settings, data))
    order = torch.randperm(len(data.train_ids), generator=torch.Generator().manual_seed(seed))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = batch_indices(order, step, settings.batch_size)
        return data.train_ids[index], data.train_labels[index]

    for step in range(after_steps):
        trainer.step(step, *batch(step))
    yield Target(f"{settings.regime}, {settings.family} ({Path(config).stem})", settings.method, trainer.model,
                  causal_lm_loss, lambda k: batch(after_steps + k), _inputs(backend), trainer.flops_model,
                  settings.seq_len)
