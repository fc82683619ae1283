"""A recipe ready to measure: its model with DropBP off, its loss, its training batches and its FLOPs model, after
some exact steps of its own training (what ``dropbp advise`` probes and ``gradient-agreement`` measures)."""
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
from dropbp.core.step_flops import StepFlops
from dropbp.recipes.for_benchmarks import FineTune, find_recipe, load_recipe

#: A loss of a model on one batch.
LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class Target:
    """A model ready to measure: ``batch(k)`` is the k-th training batch after the exact steps already trained (as
    ``loss_fn`` takes it), ``model_inputs(batch)`` the same as the model's keyword inputs (for sensitivities)."""

    name: str
    method: str
    model: nn.Module
    loss_fn: LossFn
    batch: Callable[[int], Any]
    model_inputs: Callable[[Any], Any]
    flops_model: StepFlops
    seq_len: int


def model_inputs(backend: Backend) -> Callable[[Any], dict[str, torch.Tensor]]:
    """A batch ``(input_ids, labels)`` as the model's keyword inputs on ``backend``'s device."""
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
                         lambda k: job.data.batch(after_steps + k, 0, 1, size, 0, 1), model_inputs(backend),
                         job.flops_model, recipe.data.seq_len)
        finally:
            job.cleanup()
