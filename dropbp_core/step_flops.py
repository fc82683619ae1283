"""Training FLOPs of one step under each technique: DropBP's dropped backwards, LayerDrop's skipped blocks, frozen
bottom blocks. The benchmarks charge each step with it, so runs can be compared at equal compute."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .branches import find_branches


class StepFlops:
    """Training FLOPs per step from the branches' forward FLOPs. A branch runs forward unless its whole block is
    skipped (LayerDrop, PLD); it also runs backward (``backward`` forwards' worth: about 2 for full fine-tuning,
    input and weight gradients; about 1 for LoRA, input gradients only) unless it is dropped (DropBP) or frozen.
    The LM head always runs forward and backward, on ``head_fraction`` of the positions (1: every position; less when
    it runs on labelled positions only); DropBP cannot drop it."""

    def __init__(self, model: nn.Module, seq_len: int, backward: float = 1.0, head_fraction: float = 1.0) -> None:
        found = find_branches(model, seq_len=seq_len)
        self.names = [b.name for b in found.branches]
        self.flops = found.flops
        layers = sorted({b.layer for b in found.branches})
        self.position = [layers.index(b.layer) for b in found.branches]  # each branch's block, 0 = nearest input
        self.backward = backward
        self.head = 2.0 * found.shape.hidden * found.shape.vocab * head_fraction

    def step(self, tokens: int, *, no_backward: Sequence[float] = (), skipped_blocks: Sequence[float] = (),
             trained_from: int = 0) -> float:
        """FLOPs of one step of ``tokens`` tokens: ``no_backward`` per branch (DropBP's mask), ``skipped_blocks`` per
        block (LayerDrop's), blocks below ``trained_from`` frozen. Masks may also be rates (the expected FLOPs)."""
        total = self.head * (1.0 + self.backward)
        for i, (flops, position) in enumerate(zip(self.flops, self.position)):
            kept = 1.0 - float(skipped_blocks[position]) if skipped_blocks else 1.0
            dropped = 1.0 if position < trained_from else float(no_backward[i]) if no_backward else 0.0
            total += flops * kept * (1.0 + self.backward * (1.0 - dropped))
        return total * tokens

    def head_share(self, **what: Any) -> float:
        """The share of a step's training FLOPs that the LM head and the loss take (what DropBP cannot drop), under
        ``what`` (the arguments of :meth:`step`)."""
        return self.head * (1.0 + self.backward) / self.step(1, **what)

    def saved_fraction(self, **what: Any) -> float:
        """The share of a step's training FLOPs saved by ``what`` (the arguments of :meth:`step`)."""
        return 1.0 - self.step(1, **what) / self.step(1)
