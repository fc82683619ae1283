"""LISA (layerwise importance sampling), an alternative to DropBP that users ask for: every ``period`` steps a new
random set of ``layers`` decoder blocks trains and the other blocks' parameters are frozen; whatever trains outside
the blocks (embeddings and head in full fine-tuning) trains every step.

Below the lowest training block autograd has nothing to compute, so the backward stops there; between it and the
top, the input gradients still pass through the frozen blocks (only their weight gradients are saved). The blocks
are drawn from ``(seed, period index)`` alone, so every rank and a resumed run draw the same. The optimizer must be
built over every trainable parameter *before* the first step: the policy freezes nothing until :meth:`begin_step`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .branches import find_blocks
from .checks import check_int, check_seed
from .samplers import next_step, step_generator
from .state import check_state

LISA_COUNTERS = ("steps_counted", "frozen_block_steps")


class LISA:
    """The LISA step policy on ``model`` (a :class:`~dropbp.core.policy.StepPolicy`): ``layers`` blocks train per
    period of ``period`` steps. ``mask`` is per block, True for a block frozen this step."""

    left_out = "frozen"  # what the savings line says of the share of blocks it reports

    def __init__(self, model: nn.Module, layers: int = 2, period: int = 5, *, seed: int = 0) -> None:
        self.blocks = find_blocks(model)
        self.layers = check_int("layers", layers, 1, len(self.blocks), meaning="the model's decoder blocks")
        self.period = check_int("period", period, 1)
        self.seed = check_seed(seed)
        self._model = model
        #: Per block, the parameters it trains when active (those trainable when LISA was applied: LoRA adapters).
        self._params = [[p for p in block.parameters() if p.requires_grad] for _, block in self.blocks]
        self._below = [0] * len(self.blocks)  # per block: steps in which it lay below the lowest training block
        self._mask: tuple[bool, ...] = (False,) * len(self.blocks)
        self.step: int | None = None
        self.steps_counted = 0
        self.frozen_block_steps = 0

    def active_at(self, step: int) -> list[int]:
        """The blocks that train at ``step`` (positions, 0 nearest the input): a function of ``(seed, step //
        period)``."""
        draw = torch.randperm(len(self.blocks), generator=step_generator(self.seed, step // self.period, "lisa"))
        return sorted(draw[:self.layers].tolist())

    def begin_step(self, step: int | None = None) -> tuple[bool, ...]:
        """Freeze every block but this period's; returns the mask (True = frozen)."""
        self.step = next_step(step, self.step)
        active = set(self.active_at(self.step))
        for position, params in enumerate(self._params):
            for param in params:
                param.requires_grad_(position in active)
        self._mask = tuple(position not in active for position in range(len(self.blocks)))
        if self._model.training:
            self.steps_counted += 1
            self.frozen_block_steps += sum(self._mask)
            lowest = min(active)
            for position in range(lowest):
                self._below[position] += 1
        return self._mask

    @property
    def mask(self) -> tuple[bool, ...]:
        """The blocks frozen in the current step (True = frozen)."""
        return self._mask

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> bool:
        """``loss.backward()``: some block always trains."""
        loss.backward(**kwargs)
        return True

    def step_effect(self, names: Sequence[str], realised: bool = False) -> dict[str, list[float]]:
        """No backward for the branches below the lowest training block (``realised``: the share of steps they were);
        the frozen blocks above it are charged their full backward (their input gradients still run)."""
        lowest = min((i for i, frozen in enumerate(self._mask) if not frozen), default=0)
        below = ([count / max(1, self.steps_counted) for count in self._below] if realised
                 else [float(i < lowest) for i in range(len(self.blocks))])
        prefixes = [name + "." for name, _ in self.blocks]
        return {"no_backward": [next((below[i] for i, p in enumerate(prefixes) if f"{name}.".startswith(p)), 0.0)
                                for name in names]}

    def realized_drop_fraction(self) -> float:
        """The share of block-steps frozen so far."""
        return self.frozen_block_steps / max(1, self.steps_counted * len(self.blocks))

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: the setting, the steps, the share of blocks frozen and this step's training blocks."""
        return {"method": f"LISA(layers={self.layers}, period={self.period})", "seed": self.seed,
                "steps": self.steps_counted, "realized_drop_fraction": self.realized_drop_fraction(),
                "training_blocks": [self.blocks[i][0] for i, frozen in enumerate(self._mask) if not frozen]}

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state a resumed run needs: the last step and the counters (the blocks follow from the step)."""
        return {"blocks": [name for name, _ in self.blocks], "step": self.step, "below": list(self._below),
                **{name: getattr(self, name) for name in LISA_COUNTERS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (refused, with nothing changed, for another model's blocks)."""
        check_state("LISA", state, ("blocks", "step", "below", *LISA_COUNTERS),
                    names=[name for name, _ in self.blocks], saved_names="blocks")
        self.step = None if state["step"] is None else int(state["step"])
        self._below = [int(count) for count in state["below"]]
        for name in LISA_COUNTERS:
            setattr(self, name, int(state[name]))

    def remove(self) -> None:
        """Make every block's parameters trainable again."""
        for params in self._params:
            for param in params:
                param.requires_grad_(True)
        self._mask = (False,) * len(self.blocks)

    def __repr__(self) -> str:
        return f"LISA({self.layers} of {len(self.blocks)} blocks per {self.period} steps, seed={self.seed})"
