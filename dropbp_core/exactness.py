"""Is DropBP exact on this model? Gradients under given masks against an independent reference: a copy of the model
where each dropped branch's output is replaced by a constant holding its value (``detach``), with no engine at all.

The reference for a branch that adds its residual input itself (BLOOM) is ``constant - residual.detach() +
residual``: the same gradient, but a value that may differ in the last bit, so such models are compared within
``RESIDUAL_RTOL``; every other model is compared bit for bit.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .branches import DiscoveredBranches, find_branches
from .engine import DropBP

RESIDUAL_RTOL = 1e-4


@dataclass
class MaskCheck:
    """One mask's comparison: parameters of dropped branches that got a gradient (``leaked``), parameters whose
    gradient differs from the reference (``mismatched``), and the largest absolute difference."""

    mask: tuple[bool, ...]
    leaked: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    loss_equal: bool = True

    @property
    def exact(self) -> bool:
        """No leak, no mismatch, the same loss."""
        return not self.leaked and not self.mismatched and self.loss_equal


def detach_reference(model: nn.Module, found: DiscoveredBranches, dropped: Sequence[int],
                     reference: nn.Module | None = None) -> tuple[nn.Module, list[RemovableHandle]]:
    """A deep copy of ``model`` (or ``reference``, an earlier copy) in which each branch in ``dropped`` returns a
    constant holding its output's value; also the hooks' handles, whose removal gives the plain copy back."""
    reference = copy.deepcopy(model) if reference is None else reference
    names = {id(module): name for name, module in model.named_modules()}
    handles = []
    for index in dropped:
        part = found.parts[index]
        last = reference.get_submodule(names[id(part.last)])
        if part.residual is None:
            handles.append(last.register_forward_hook(_constant_output))
            continue
        first = reference.get_submodule(names[id(part.first)])
        seen: dict[str, Any] = {}
        position, name = part.residual
        handles.append(first.register_forward_pre_hook(
            lambda module, args, kwargs, seen=seen, position=position, name=name:
            seen.update(residual=args[position] if len(args) > position else kwargs.get(name)), with_kwargs=True))
        handles.append(last.register_forward_hook(
            lambda module, args, output, seen=seen: _constant_plus(output, seen.pop("residual"))))
    return reference, handles


def _constant_output(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, tuple):
        return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in output)
    return output.detach() if isinstance(output, torch.Tensor) else output


def _constant_plus(output: Any, residual: torch.Tensor) -> Any:
    head = output[0] if isinstance(output, tuple) else output
    head = head.detach() - residual.detach() + residual
    return (head, *_constant_output(None, (), output[1:])) if isinstance(output, tuple) else head


def _loss_and_grads(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=batch, labels=batch).loss
    if loss.requires_grad:
        loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def check_masks(model: nn.Module, masks: Sequence[Sequence[bool]], batch: torch.Tensor,
                **discovery: Any) -> list[MaskCheck]:
    """Wrap ``model`` with DropBP (``discovery``: ``find_branches`` keywords), and for each mask compare the loss
    and every trainable parameter's gradient with :func:`detach_reference`'s. The model is left unwrapped."""
    found = find_branches(model, **discovery)
    exact = all(part.residual is None for part in found.parts)
    results = []
    reference = None
    for mask in masks:
        dropped = [i for i, is_dropped in enumerate(mask) if is_dropped]
        reference, handles = detach_reference(model, found, dropped, reference)
        with DropBP(model, 0.5, **discovery) as dropbp:
            dropbp.begin_step(0, mask=list(mask))
            loss, grads = _loss_and_grads(model, batch)
        ref_loss, ref_grads = _loss_and_grads(reference, batch)
        for handle in handles:
            handle.remove()
        check = MaskCheck(tuple(bool(m) for m in mask))
        check.loss_equal = bool(torch.equal(loss, ref_loss) if exact else
                                torch.allclose(loss, ref_loss, rtol=RESIDUAL_RTOL, atol=0))
        owned = {id(p) for i in dropped for p in found.parts[i].parameters()}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            grad, ref = grads[name], ref_grads[name]
            if id(param) in owned and grad is not None:
                check.leaked.append(name)
            elif (grad is None) != (ref is None):
                check.mismatched.append(name)
            elif grad is not None:
                diff = float((grad - ref).abs().max()) if grad.numel() else 0.0
                check.max_abs_diff = max(check.max_abs_diff, diff)
                same = torch.equal(grad, ref) if exact else torch.allclose(grad, ref, rtol=RESIDUAL_RTOL, atol=1e-6)
                if not same:
                    check.mismatched.append(name)
        results.append(check)
    return results
