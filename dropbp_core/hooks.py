"""The engine's forward hooks as objects (not closures), so that a wrapped model can be deep-copied and pickled."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def _inert(*args: Any) -> None:
    """What a DropBP hook becomes in a pickled model (``torch.save(model)``): nothing. The loaded model is unwrapped."""


def _inert_hook() -> Any:
    """Unpickling a DropBP hook gives :func:`_inert`."""
    return _inert


class Hook:
    """One of an engine's forward hooks, by ``kind``:

    - ``model_pre`` (on the model): undo what an interrupted forward left behind;
    - ``model_post`` (on the model): tie the outputs of a step with no trainable path to the engine's anchor;
    - ``branch_pre`` / ``branch_post`` (on branch ``index``): turn grad mode off for a dropped branch, and back on
      with its output detached.
    - ``projection_pre`` / ``projection_post`` (on branch ``index``'s output projection, with
      ``train_output_projection``): grad mode on inside it while its branch is dropped.

    An object rather than a closure, so that copies behave: ``copy.deepcopy`` of a wrapped model copies the engine
    with it (the copy carries its own engine, found with :meth:`DropBP.of`), and pickling stores an inert hook (the
    saved model is unwrapped; wrap it again after loading).
    """

    __slots__ = ("engine", "kind", "index")

    def __init__(self, engine: Any, kind: str, index: int = -1) -> None:  # engine: the DropBP it serves
        self.engine, self.kind, self.index = engine, kind, index

    def __call__(self, module: nn.Module, args: Any, output: Any = None) -> Any:
        if self.kind == "branch_pre":  # ``output`` is the keyword arguments when registered with_kwargs
            return self.engine._before_branch(self.index, module, args, output)
        if self.kind == "branch_post":
            return self.engine._after_branch(self.index, output)
        if self.kind == "projection_pre":
            return self.engine._projections.before(self.engine._grad_mode[self.index] is not None)
        if self.kind == "projection_post":
            return self.engine._projections.after(self.index, self.engine._grad_mode[self.index] is not None, output)
        if self.kind == "model_post":
            return self.engine._after_model(module, output)
        if self.kind == "model_pre":
            return self.engine._recover()
        raise ValueError(f"unknown hook kind {self.kind!r}")

    def __deepcopy__(self, memo: dict[int, Any]) -> "Hook":
        return Hook(copy.deepcopy(self.engine, memo), self.kind, self.index)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _inert_hook, ()


def detach_outputs(value: Any) -> Any:
    """``value`` with every tensor in it detached (tuples, lists and dicts, such as a ``ModelOutput``, kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(detach_outputs(v) for v in value)
    if isinstance(value, list):
        return [detach_outputs(v) for v in value]
    if isinstance(value, dict):
        return {k: detach_outputs(v) for k, v in value.items()}
    return value


def pass_residual(output: Any, residual: Any) -> Any:
    """A dropped branch that adds its ``residual`` input itself (BLOOM): its output detached, plus
    ``residual - residual.detach()`` on the first tensor: the same value (adding zero), and the residual stream's
    gradient passes to ``residual`` exactly while none reaches the branch."""
    output = detach_outputs(output)
    if not isinstance(residual, torch.Tensor) or not residual.requires_grad:
        return output
    if isinstance(output, torch.Tensor):
        return output + (residual - residual.detach())
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0] + (residual - residual.detach()), *output[1:])
    return output


def tie_to_anchor(value: Any, anchor: torch.Tensor, max_depth: int, depth: int = 0) -> Any:
    """``value`` with every floating-point tensor that does not require a gradient, at any depth up to
    ``max_depth`` (dicts such as a ``ModelOutput`` are changed in place), replaced by ``tensor + 0 * anchor``."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not value.requires_grad:
            return value + anchor.to(device=value.device, dtype=value.dtype) * 0
        return value
    if depth >= max_depth:
        return value
    if isinstance(value, dict):  # transformers' ModelOutput is a dict as well: every field, not just loss
        for key in list(value.keys()):
            value[key] = tie_to_anchor(value[key], anchor, max_depth, depth + 1)
        return value
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(tie_to_anchor(v, anchor, max_depth, depth + 1) for v in value)
    return value
