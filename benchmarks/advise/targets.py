"""What the probe measures: a model with its loss, its training batches and its FLOPs model, from a recipe (what
``dropbp advise`` takes; ``..recipe_target``) or from a regime study's config (the toy regimes the advice is
validated on)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from dropbp.backends import Backend
from dropbp.core.seeding import seeded
from dropbp.recipes.for_benchmarks import Problems, build, causal_lm_loss, read_yaml

from ..recipe_target import Target, model_inputs, recipe_target
from ..regime.run import TaskWorkload, batch_indices, pretrained_state, steps_per_run, task_data
from ..regime.settings import RegimeSettings
from ..study import Contender

__all__ = ["Target", "recipe_target", "regime_target"]


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
                  causal_lm_loss, lambda k: batch(after_steps + k), model_inputs(backend), trainer.flops_model,
                  settings.seq_len)
