"""The optimiser a recipe asks for (``optim.*``) and its learning-rate schedule: linear warm-up, then constant,
linear or cosine decay (recipes and benchmarks alike)."""
from __future__ import annotations

import math

import torch
from torch import nn

from dropbp.recipes.config.schema import OptimSection


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """AdamW or SGD over ``model``'s parameters that require gradients, at ``optim.lr`` and ``optim.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.SGD if optim.optimizer == "sgd" else torch.optim.AdamW
    return kind(params, lr=optim.lr, weight_decay=optim.weight_decay)


def lr_factor(step: int, warmup: int, total: int, lr_schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if lr_schedule == "linear":
        return 1.0 - progress
    if lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                 lr_schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets each step's rate to the peak times :func:`lr_factor` (step it after each optimizer
    step; its state goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, lr_schedule))
