"""Layer freezing, the simplest alternative to DropBP: train only the top ``k`` decoder blocks.

Below the lowest trainable block autograd has nothing to compute, so the backward pass stops there: a frozen
bottom saves that share of the backward compute (and its activations), deterministically, every step.
:func:`blocks_for_backward_budget` picks ``k`` so that the backward FLOPs match DropBP at a given drop rate.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .branches import find_blocks
from .checks import check_int
from .errors import ConfigError


@dataclass
class FrozenLayers:
    """What :func:`freeze_bottom_layers` did: the trained and frozen blocks, and the parameters it switched off."""

    trained_blocks: list[str]
    frozen_blocks: list[str]
    frozen_parameters: list[nn.Parameter]

    def unfreeze(self) -> None:
        """Make the parameters this call froze trainable again."""
        for parameter in self.frozen_parameters:
            parameter.requires_grad_(True)


def blocks_for_backward_budget(num_layers: int, drop_rate: float) -> int:
    """How many top blocks to train so that the backward FLOPs are about ``1 - drop_rate`` of the full backward
    (at least one block)."""
    if not 0 <= drop_rate < 1:
        raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate}.")
    return max(1, min(num_layers, round(num_layers * (1.0 - drop_rate))))


def freeze_bottom_layers(model: nn.Module, train_top: int, *, name: str = "train_top") -> FrozenLayers:
    """Freeze every parameter below the top ``train_top`` decoder blocks: the bottom blocks and the embeddings (the
    final norm and the head keep whatever ``requires_grad`` they had). Under LoRA this freezes the bottom blocks'
    adapters. Frozen parameters get no gradient (their ``.grad`` stays ``None``). ``name`` is how errors call
    ``train_top``."""
    blocks = [name for name, _ in find_blocks(model)]
    check_int(name, train_top, 1, len(blocks), meaning="the model's decoder blocks")
    bottom = blocks[:len(blocks) - train_top]
    frozen: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        below = any(name.startswith(block + ".") for block in bottom) or "embed_tokens" in name
        if below and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(parameter)
    return FrozenLayers(blocks[len(blocks) - train_top:], bottom, frozen)
