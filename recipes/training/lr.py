"""The learning-rate schedule of recipes and benchmarks: linear warm-up, then constant, linear or cosine decay."""
from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                 schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets each step's rate to the peak times :func:`lr_factor` (step it after each optimizer
    step; its state goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, schedule))
