"""Branch sensitivity: how much the parameter gradients change when one branch alone is dropped.

- ``exact`` is the reference code's measure, ``C_i = sum_p (||g_p|| - ||g_p^(i)||)^2`` over trainable parameters
  ``p``, full model vs branch ``i`` alone dropped, on one batch: ``1 + N`` forward+backward passes for N branches.
- ``fast`` estimates all ``C_i`` from ONE ordinary forward+backward (plus a forward of a few tokens to find each
  branch's pre-norm). Dropping branch ``i`` changes two things:
    1. its own parameters and its pre-norm's lose their whole gradient, so they contribute exactly
       ``sum ||g_p||^2`` over them, read from the ordinary backward;
    2. the gradient the branch sends back into the residual stream, ``delta_i`` (captured with a backward hook on
       its pre-norm), no longer reaches the parameters upstream of it: the residual-stream gradient at the branch's
       input ``x_i`` becomes ``dL/dx_i - delta_i``. Treating the map from that gradient to the upstream parameter
       gradients as a scaled isometry, with the gain ``G_i = sum_{p upstream} ||g_p||^2 / ||dL/dx_i||^2`` measured
       in the same backward, the upstream terms of ``C_i`` sum to about
       ``G_i * (||dL/dx_i|| - ||dL/dx_i - delta_i||)^2``: the same difference-of-norms form as the exact measure.
  Downstream parameters are unaffected: the forward pass does not change when a branch is dropped.
- ``online`` refreshes the same estimate from ordinary training steps (a branch's terms are updated on the steps
  where it was kept) at no extra cost; see :class:`OnlineSensitivity`.

Every computation here is deterministic, restores the model's gradients and train/eval state and the engine's
mask, and leaves every global random generator as it found it (``torch.random.fork_rng``; Python's and NumPy's
generators are never used).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .engine import DropBP
from .errors import ConfigError
from .progress import progress_bar
from .seeding import reseed, seeded
from .state import check_state

Batch = torch.Tensor | Mapping[str, Any]
SENSITIVITY_METHODS: tuple[str, ...] = ("exact", "fast")


@dataclass
class Sensitivity:
    """Per-branch sensitivities and what they cost, in forward+backward step equivalents."""

    values: list[float]
    method: str
    step_equivalents: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


def _check_batch(batch: Batch) -> None:
    ids = batch["input_ids"] if isinstance(batch, Mapping) else batch
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ConfigError(
            f"batch too small for a sensitivity estimate: need token ids of shape (sequences >= 1, tokens >= 2) so "
            f"that the next-token loss has a gradient, got {shape}."
        )


def _loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    loss = model(**batch).loss if isinstance(batch, Mapping) else model(input_ids=batch, labels=batch).loss
    if loss is None:
        raise ConfigError(
            "the model returned no loss for the sensitivity batch: give the batch `labels` (the token ids "
            "themselves for the language-model loss, or the recipe's labels), or pass the token ids alone as a "
            "tensor, which measures on the language-model loss."
        )
    return loss


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that recompute their forward in the backward (Hugging Face's ``gradient_checkpointing`` flag):
    the recomputation runs forward hooks a second time, which a measurement by hooks must not see."""
    return [module for module in model.modules() if getattr(module, "gradient_checkpointing", None) is True]


@contextlib.contextmanager
def isolated(model: nn.Module, dropbp: DropBP | None = None, seed: int = 0) -> Iterator[list[nn.Parameter]]:
    """Inside: trainable parameters with no gradient, the model in train mode, the DropBP hooks attached,
    activation checkpointing off (the measurement's one backward keeps its activations), generators forked and
    seeded. Afterwards: the gradients, the train/eval state, whether the hooks were attached, checkpointing and
    every generator's state are what they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    training = model.training
    was_attached = dropbp is None or dropbp.attached
    if dropbp is not None:
        dropbp.attach()
    recomputing = checkpointed_layers(model)
    with seeded(seed, _device(model)):
        for param in params:
            param.grad = None
        for layer in recomputing:
            layer.gradient_checkpointing = False
        model.train()
        try:
            yield params
        finally:
            for param, grad in zip(params, saved):
                param.grad = grad
            for layer in recomputing:
                layer.gradient_checkpointing = True
            model.train(training)
            if not was_attached:
                dropbp.remove()


def _grad_norms(params: Sequence[nn.Parameter]) -> torch.Tensor:
    norms = [p.grad.detach().double().norm() if p.grad is not None else torch.zeros((), dtype=torch.float64,
                                                                                     device=p.device)
             for p in params]
    return torch.stack(norms).cpu() if norms else torch.zeros(0, dtype=torch.float64)


def _backward_pass(model: nn.Module, dropbp: DropBP, batch: Batch, params: Sequence[nn.Parameter], mask: Any,
                   seed: int) -> torch.Tensor:
    reseed(seed, _device(model))
    for param in params:
        param.grad = None
    with dropbp.forced_mask(mask):
        loss = _loss(model, batch)
    if loss.requires_grad:
        loss.backward()
    return _grad_norms(params)


def exact_sensitivity(model: nn.Module, dropbp: DropBP, batch: Batch, *, seed: int = 0,
                      progress: bool = False) -> Sensitivity:
    """The reference measure with ``1 + N`` forward+backward passes (N branches); a progress bar if asked."""
    _check_batch(batch)
    start = time.perf_counter()
    with isolated(model, dropbp, seed) as params:
        base = _backward_pass(model, dropbp, batch, params, "none", seed)
        values = []
        for index in progress_bar(range(len(dropbp.branches)), desc="exact sensitivity", enabled=progress):
            mask = [j == index for j in range(len(dropbp.branches))]
            dropped = _backward_pass(model, dropbp, batch, params, mask, seed)
            values.append(float(((base - dropped) ** 2).sum()))
    return Sensitivity(values, "exact", float(len(values) + 1), time.perf_counter() - start)


def find_pre_norms(model: nn.Module, dropbp: DropBP, batch: Batch) -> list[nn.Module | None]:
    """For each branch, the module whose output is the branch's input (its pre-norm), found in a forward pass over
    the first few tokens under ``no_grad``; None where the input comes from no module (e.g. a plain tensor op)."""
    ids = batch["input_ids"] if isinstance(batch, Mapping) else batch
    probe = ids[:1, : min(8, ids.shape[1])]
    producer: dict[int, nn.Module] = {}
    found: list[nn.Module | None] = [None] * len(dropbp.branches)
    handles = []

    def remember(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            producer[id(output)] = module

    def lookup(index: int):
        def hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor):
                found[index] = producer.get(id(x))

        return hook

    branch_modules = set(map(id, dropbp._modules))
    for module in model.modules():
        if id(module) not in branch_modules:
            handles.append(module.register_forward_hook(remember))
    for index, module in enumerate(dropbp._modules):
        handles.append(module.register_forward_pre_hook(lookup(index), with_kwargs=True))
    try:
        with torch.no_grad(), dropbp.forced_mask("none"):
            model(input_ids=probe)
    finally:
        for handle in handles:
            handle.remove()
    return found


class GradientProbe:
    """Hooks that read, during an ordinary forward+backward, what :func:`fast_sensitivity` needs: the order in which
    parameters are used, each branch's residual-stream gradient ``delta_i`` (the pre-norm's input gradient) and the
    total gradient at the branch's input point."""

    def __init__(self, model: nn.Module, dropbp: DropBP, pre_norms: Sequence[nn.Module | None]) -> None:
        self.model, self.dropbp, self.pre_norms = model, dropbp, list(pre_norms)
        n = len(dropbp.branches)
        self._delta: dict[int, torch.Tensor] = {}
        self.norm_change_sq = [0.0] * n  # (||dL/dx_i|| - ||dL/dx_i - delta_i||)^2
        self.stream_sq = [0.0] * n       # ||dL/dx_i||^2
        self.entry_order = [0] * n
        self.first_use: dict[int, int] = {}
        self._counter = 0
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []

    def _order_hook(self, module: nn.Module, args: Any) -> None:
        self._counter += 1
        for param in module.parameters(recurse=False):
            self.first_use.setdefault(id(param), self._counter)

    def _norm_entry(self, index: int):
        def hook(module: nn.Module, args: Any) -> None:
            self._counter += 1
            self.entry_order[index] = self._counter
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.requires_grad:
                def store(grad: torch.Tensor) -> None:  # runs after the pre-norm's hook has stored delta
                    total = grad.detach().double()
                    delta = self._delta.pop(index, None)
                    self.stream_sq[index] = float(total.pow(2).sum())
                    if delta is not None:
                        kept = total - delta.double()
                        self.norm_change_sq[index] = float((total.norm() - kept.norm()) ** 2)

                self._tensor_handles.append(x.register_hook(store))

        return hook

    def _norm_backward(self, index: int):
        def hook(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
            grad = grad_input[0] if grad_input else None
            if grad is not None:
                self._delta[index] = grad.detach()

        return hook

    def reset(self) -> None:
        """Forget the per-pass records (use order, tensor hooks), ready for the next forward+backward."""
        self.first_use.clear()
        self._counter = 0
        self._delta.clear()
        self._tensor_handles.clear()  # their tensors are gone with the graph; nothing to remove

    def __enter__(self) -> "GradientProbe":
        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(self._order_hook))
        for index, norm in enumerate(self.pre_norms):
            if norm is not None:
                self._handles.append(norm.register_forward_pre_hook(self._norm_entry(index)))
                self._handles.append(norm.register_full_backward_hook(self._norm_backward(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles + self._tensor_handles:
            handle.remove()
        self._handles.clear()
        self._tensor_handles.clear()

    def estimate(self, params: Sequence[nn.Parameter], grad_sq: torch.Tensor,
                 kept: Sequence[bool] | None = None) -> list[float | None]:
        """Per-branch estimate from one backward: own + pre-norm gradient energy, plus the upstream term
        ``G_i * (||dL/dx_i|| - ||dL/dx_i - delta_i||)^2``.
        ``kept`` (default: all) marks the branches this backward saw undropped; the others get None."""
        owners = [set() for _ in self.dropbp.branches]
        for index, (branch, norm) in enumerate(zip(self.dropbp.branches, self.pre_norms)):
            module_params = self.dropbp._parts[index].parameters()
            if norm is not None:
                module_params += list(norm.parameters())
            owners[index] = {id(p) for p in module_params}
        values: list[float | None] = []
        for index in range(len(self.dropbp.branches)):
            if kept is not None and not kept[index]:
                values.append(None)
                continue
            own = sum(float(g) for p, g in zip(params, grad_sq) if id(p) in owners[index])
            entry = self.entry_order[index]
            upstream = sum(float(g) for p, g in zip(params, grad_sq)
                           if self.first_use.get(id(p), 1 << 62) < entry and id(p) not in owners[index])
            gain = upstream / self.stream_sq[index] if self.stream_sq[index] > 0 else 0.0
            values.append(own + self.norm_change_sq[index] * gain)
        return values


def fast_sensitivity(model: nn.Module, dropbp: DropBP, batch: Batch, *, seed: int = 0) -> Sensitivity:
    """All branch sensitivities from one ordinary forward+backward (see the module docstring)."""
    _check_batch(batch)
    start = time.perf_counter()
    with isolated(model, dropbp, seed) as params:
        pre_norms = find_pre_norms(model, dropbp, batch)
        with GradientProbe(model, dropbp, pre_norms) as probe, dropbp.forced_mask("none"):
            reseed(seed, _device(model))
            loss = _loss(model, batch)
            if loss.requires_grad:
                with warnings.catch_warnings():  # frozen layers' pre-norms have no input gradient: expected here
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
        grad_sq = _grad_norms(params) ** 2
        values = [float(v) for v in probe.estimate(params, grad_sq)]
    ids = batch["input_ids"] if isinstance(batch, Mapping) else batch
    probe_cost = min(8, ids.shape[1]) / (3.0 * ids.numel())  # a no-grad forward of <= 8 tokens of one sequence
    return Sensitivity(values, "fast", 1.0 + probe_cost, time.perf_counter() - start)


def compute_sensitivity(method: str, model: nn.Module, dropbp: DropBP, batch: Batch, *, seed: int = 0,
                        progress: bool = False) -> Sensitivity:
    """Dispatch on ``method`` ('exact' or 'fast')."""
    if method == "exact":
        return exact_sensitivity(model, dropbp, batch, seed=seed, progress=progress)
    if method == "fast":
        return fast_sensitivity(model, dropbp, batch, seed=seed)
    raise ConfigError(f"sensitivity must be one of {', '.join(SENSITIVITY_METHODS)}, got {method!r}.")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank)."""
    if len(a) != len(b) or len(a) < 2:
        raise ConfigError("spearman needs two sequences of the same length >= 2.")

    def ranks(values: Sequence[float]) -> torch.Tensor:
        x = torch.tensor(values, dtype=torch.float64)
        order = torch.argsort(x)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in torch.unique(x):  # average ranks over ties
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else 0.0


class OnlineSensitivity:
    """Sensitivities refreshed for free from ordinary training steps.

    Keeps a :class:`GradientProbe` attached; after each :meth:`DropBP.backward` it reads the gradients the step
    produced anyway and updates, for every branch that step kept, an exponential moving average of its estimate
    (a dropped branch has no gradient to read, so its estimate waits for a step that keeps it). Costs no extra
    forward or backward pass: only hooks and one gradient-norm reduction per step.
    """

    def __init__(self, model: nn.Module, dropbp: DropBP, sample_batch: Batch, *, decay: float = 0.9) -> None:
        _check_batch(sample_batch)
        if not 0 <= decay < 1:
            raise ConfigError(f"decay must be in [0, 1), got {decay}.")
        if checkpointed_layers(model):
            raise ConfigError("online sensitivity reads the gradients of ordinary training steps, which activation "
                              "checkpointing recomputes out of its sight; use allocation sensitivity (measured once, "
                              "with checkpointing paused) or turn checkpointing off.")
        self.model, self.dropbp, self.decay = model, dropbp, decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.probe = GradientProbe(model, dropbp, find_pre_norms(model, dropbp, sample_batch))
        self.values: list[float | None] = [None] * len(dropbp.branches)
        self.updates = [0] * len(dropbp.branches)
        self.probe.__enter__()
        dropbp.after_backward_callbacks.append(self._after_backward)

    def _after_backward(self, dropbp: DropBP, ran: bool) -> None:
        if ran:
            kept = [not m for m in dropbp.mask]
            estimate = self.probe.estimate(self.params, _grad_norms(self.params) ** 2, kept)
            for index, value in enumerate(estimate):
                if value is None:
                    continue
                old = self.values[index]
                self.values[index] = value if old is None else self.decay * old + (1 - self.decay) * value
                self.updates[index] += 1
        self.probe.reset()

    def state_dict(self) -> dict[str, Any]:
        """The moving averages and how many steps fed each (JSON-ready)."""
        return {"values": list(self.values), "updates": list(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        check_state("OnlineSensitivity", state, ("values", "updates"))
        if len(state["values"]) != len(self.values) or len(state["updates"]) != len(self.updates):
            raise ConfigError(f"OnlineSensitivity state holds {len(state['values'])} branches, this model has "
                              f"{len(self.values)}.")
        self.values = [None if v is None else float(v) for v in state["values"]]
        self.updates = [int(u) for u in state["updates"]]

    def current(self) -> list[float] | None:
        """The latest estimates; branches never kept so far get the mean of the others. None before any update."""
        known = [v for v in self.values if v is not None]
        if not known:
            return None
        mean = sum(known) / len(known)
        return [mean if v is None else v for v in self.values]

    def close(self) -> None:
        """Remove the hooks and the callback."""
        self.probe.__exit__()
        if self._after_backward in self.dropbp.after_backward_callbacks:
            self.dropbp.after_backward_callbacks.remove(self._after_backward)
