"""A dropped branch that still trains its output projection (``train_output_projection``).

When a branch is dropped, the residual stream's gradient still arrives at the branch's output; the only thing
missing to train the branch's *last* linear layer (``o_proj``, ``down_proj``, or its LoRA adapter) is that layer's
input, which the forward pass computes anyway. So the engine runs that one layer with autograd on (its input, made
without autograd, carries no graph), and keeps the graph from its output to its own weights. Its weights then get
exactly the gradient they get when the branch is kept under the same mask elsewhere, while nothing flows into the
rest of the branch or below it through the branch. It costs that layer's weight gradients (for a LoRA adapter: two
rank-r products) and keeps its input until the backward.

Exactness needs the layer's output to *be* the branch's output: a post-norm, a scale or a residual added inside the
branch in between would make the gradient wrong. That is checked on every forward by identity: where the branch
returns anything else, the output is detached as for any dropped branch, and the engine warns once, naming it.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .hooks import detach_outputs


def _has_weight(module: nn.Module) -> bool:
    """A layer that holds its own weight (``nn.Linear``, GPT-2's ``Conv1D``) or wraps one (a PEFT LoRA layer)."""
    return isinstance(getattr(module, "weight", None), torch.Tensor) or hasattr(module, "base_layer")


def output_projection(last: nn.Module) -> nn.Module | None:
    """The layer a branch ending at module ``last`` ends with: the last child holding parameters (in registration
    order), descended into until it is a layer with its own weight; None if there is none (``last`` itself is such
    a layer: then the whole branch is one layer, and keeping it would be keeping the branch)."""
    module = last
    while not _has_weight(module):
        holders = [child for child in module.children() if any(True for _ in child.parameters())]
        if not holders:
            return None
        module = holders[-1]
    return None if module is last else module


def keep_projection(output: Any, projected: torch.Tensor) -> Any | None:
    """``output`` of a dropped branch with everything detached except ``projected`` (the projection's output), if
    the branch returns exactly that tensor (alone, or first in a tuple); else None."""
    if output is projected:
        return output
    if isinstance(output, tuple) and output and output[0] is projected:
        return (projected, *detach_outputs(output[1:]))
    return None


class ProjectionTraining:
    """The engine's per-branch output projections (None where off or not found) and what their hooks carry between
    a projection's forward and its branch's end."""

    def __init__(self, lasts: list[nn.Module], names: list[str], enabled: bool) -> None:
        self.layers = [output_projection(last) if enabled else None for last in lasts]
        self._outputs: list[torch.Tensor | None] = [None] * len(lasts)
        self._warned: set[str] = set()
        alone = [name for name, layer in zip(names, self.layers) if enabled and layer is None]
        if alone:
            warnings.warn(f"train_output_projection is on, but {len(alone)} of {len(names)} branches have no output "
                          f"projection apart from the rest of the branch (a branch that is one layer, or holds no "
                          f"weights): {', '.join(alone[:4])}{', ...' if len(alone) > 4 else ''}. When dropped, they "
                          "train nothing, as in plain DropBP.", RuntimeWarning, stacklevel=3)

    def before(self, dropped: bool) -> None:
        """Before a projection's forward: autograd on for this one layer if its branch runs dropped."""
        if dropped:
            torch.set_grad_enabled(True)

    def after(self, index: int, dropped: bool, output: Any) -> None:
        """After it: autograd off again, its output kept for the end of the branch."""
        if dropped:
            torch.set_grad_enabled(False)
            self._outputs[index] = output if isinstance(output, torch.Tensor) else None

    def keep(self, index: int, name: str, output: Any, adds_residual: bool) -> Any | None:
        """The dropped branch ``index``'s output with its projection's graph kept (:func:`keep_projection`), or
        None (then it is detached as usual; a branch that does not return its projection's output is warned once)."""
        projected, self._outputs[index] = self._outputs[index], None
        if projected is None:
            return None
        kept = None if adds_residual else keep_projection(output, projected)
        if kept is None and name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"branch {name} does not return its output projection's output unchanged, so that "
                          "projection cannot be trained exactly when the branch is dropped; it gets no gradient "
                          "then, as the rest of the branch.", RuntimeWarning, stacklevel=3)
        return kept

    def trained(self, index: int, dropped: bool, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters of branch ``index`` (holding ``params``) that can get a gradient under its mask bit."""
        layer = self.layers[index]
        if not dropped:
            return params
        return [] if layer is None else list(layer.parameters())

    def clear(self) -> None:
        """Forget outputs an interrupted forward left behind."""
        self._outputs = [None] * len(self._outputs)
