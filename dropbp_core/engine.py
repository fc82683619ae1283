"""The DropBP engine: forward hooks that run dropped branches without autograd, and the per-step bookkeeping.

Where a branch is wrapped (pre-norm decoder block, Llama naming)::

    x ──────────────┬─────────────────────────────(+)──> x'      kept branch: ordinary forward and backward
                    └─ input_layernorm ─ self_attn ─┘            dropped branch: self_attn runs under no_grad,
                                        ^ hooks                  so neither it nor the norm before it gets a
                                                                 gradient or keeps activations; gradient still
                                                                 reaches x through the residual path.

A branch may span several modules (a post-norm, OPT's ``fc1 -> fc2``): the pre-hook sits on the first, the post-hook
on the last (:class:`~dropbp.core.branches.BranchParts`).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .allocation import drop_fraction, uniform_rates, validate_rates
from .branches import Branch, Patterns, find_branches
from .dynamo_settings import guard_module_hooks
from .errors import AlreadyWrappedError, ConfigError
from .hooks import Hook, detach_outputs, pass_residual, tie_to_anchor
from .masks import MaskSpec, parse_mask
from .output_projection import ProjectionTraining
from .checks import check_int, check_seed
from .samplers import Sampler, make_sampler, next_step
from .rate_schedule import RateController
from .step_report import StepReport

#: ``callback(engine, backward_ran)``, run after each :meth:`DropBP.backward`.
AfterBackward = Callable[["DropBP", bool], None]
#: How deep into nested outputs (tuples, dicts) the no-trainable-path tie reaches.
MAX_TIE_DEPTH = 8


class DropBP(StepReport):
    """Apply DropBP to a Hugging Face decoder in place (forward hooks only: ``state_dict`` keys do not change).

    Typical use in your own loop::

        dropbp = DropBP(model, drop_rate=0.75)          # find branches, attach hooks
        for step, batch in enumerate(loader):
            dropbp.begin_step(step)                      # this step's mask: a pure function of (seed, step)
            loss = model(**batch).loss
            dropbp.backward(loss)                        # backward, or count a step where every branch was dropped
            optimizer.step(); optimizer.zero_grad()

    The engine knows no devices: on a device with step boundaries (lazy-mode Gaudi's ``mark_step``) let the
    backend drive the step instead, ``device.backward(loss, dropbp)`` and ``device.optimizer_step(optimizer)``
    (see :class:`dropbp.backends.Backend`), which call :meth:`backward` and add the boundaries.

    ``begin_step(step, mask=...)`` forces a mask (a bool per branch, a set of branch names, ``"all"`` or ``"none"``).
    :meth:`realized_rates` and :meth:`report` give the rates actually realised beside the rates asked for.
    Everything is validated before the model is touched; :meth:`remove` takes the hooks off again.

    **Steps with no trainable path.** When, under a mask, no trainable weight can get a gradient (every branch
    dropped under LoRA; LoRA on q/v with every attention branch dropped: :meth:`has_trainable_path`), the output
    would not require a gradient and ``loss.backward()`` would raise. So a forward hook on the model then adds
    ``0 * anchor`` (a scalar leaf of the engine, not a model parameter) to every floating-point tensor it returns,
    at any depth (``loss``, ``logits``, fields a trainer invents such as TRL's ``log_probs``): ``loss.backward()``,
    ``accelerator.backward(loss)`` and ``Trainer`` run, no parameter gets a gradient, the step is counted in
    ``no_trainable_path_steps`` and :meth:`backward` skips its (empty) backward.

    ``train_output_projection=True``: a dropped branch still trains the layer it ends with (``o_proj``, ``down_proj``
    or its adapter), exactly (:mod:`~dropbp.core.output_projection`); its input is then kept for the backward.

    One engine per model: wrapping a model (or any module inside it) that an attached engine already wraps is
    refused; :meth:`DropBP.of` finds that engine. A step counts towards :meth:`report` only when its mask can take
    effect: hooks attached, the branches' own modules in training mode (not just a wrapper around them); a branch
    in eval mode is never dropped nor counted so, and a step where none can drop is an ``uncounted_steps`` (warned).
    ``copy.deepcopy(model)`` gives a copy that carries its own engine (``DropBP.of(copy)``), independent of this
    one; ``pickle``/``torch.save(model)`` save the model unwrapped (its hooks become inert no-ops).
    """

    def __init__(
        self,
        model: nn.Module,
        drop_rate: float = 0.5,
        *,
        rates: Sequence[float] | None = None,
        sampler: str = "bernoulli",
        pool_size: int = 8,
        seed: int = 0,
        attn: Patterns | None = None,
        mlp: Patterns | None = None,
        layers: Iterable[int] | None = None,
        exclude_layers: Iterable[int] | None = None,
        seq_len: int = 2048,
        schedule: RateController | None = None,
        train_output_projection: bool = False,
    ) -> None:
        if (existing := DropBP.of(model)) is not None:
            raise AlreadyWrappedError(existing)
        found = find_branches(model, attn=attn, mlp=mlp, layers=layers, exclude_layers=exclude_layers, seq_len=seq_len)
        self.branches: list[Branch] = found.branches
        self.shape = found.shape
        self.model_type = found.model_type
        self.flops: list[int] = found.flops
        self.rates = (validate_rates(rates, len(self.branches)) if rates is not None
                      else uniform_rates(len(self.branches), drop_rate))
        self.seed = check_seed(seed)
        self.pool_size = check_int("pool_size", pool_size, 1, meaning="masks in the pool sampler")
        self.sampler: Sampler = make_sampler(sampler, self.rates, self.flops, seed, pool_size)
        if schedule is not None and sampler == "pool" and schedule.distinct_rates(1.0) is None:
            raise ConfigError(f"the pool sampler needs a schedule with a bounded number of rates, so that the masks "
                              f"(and compiled graphs) stay bounded; give the {schedule.kind} schedule levels (e.g. 4), "
                              f"or use the steps or constant kind.")
        self.schedule = schedule
        self._asked = drop_fraction(self.flops, self.rates)
        self._scaled: dict[float, Sampler] = {}  # pool samplers of the scheduled rates, by factor
        # Everything is valid: only now touch the model.
        self._model = model
        self._parts = found.parts
        self._projections = ProjectionTraining([p.last for p in found.parts], [b.name for b in found.branches],
                                               train_output_projection)
        self._modules = found.modules  # where each branch starts
        self._residual: list[torch.Tensor | None] = [None] * len(self.branches)
        self._mask: tuple[bool, ...] = (False,) * len(self.branches)
        self._grad_mode: list[bool | None] = [None] * len(self.branches)
        #: A scalar leaf, not a model parameter: outputs of a step with no trainable path are tied to it (see above).
        self._anchor = torch.zeros((), requires_grad=True)
        self._handles: list[RemovableHandle] = []
        #: Called as ``callback(dropbp, backward_ran)`` after each :meth:`backward` (e.g. online sensitivity).
        self.after_backward_callbacks: list[AfterBackward] = []
        self.step: int | None = None
        self._warned_uncounted = False
        self.reset_counters()
        self.attach()

    # -- hooks -------------------------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Undo what an interrupted forward left behind. PyTorch runs ``always_call`` post-hooks for ``Exception``
        but not for ``KeyboardInterrupt``: then grad mode stays off and a slot stays set. The next forward of the
        model (its pre-hook), of any branch, or the next :meth:`begin_step` restores grad mode and clears the slots,
        so the step after any failure is an ordinary one."""
        stale = [mode for mode in self._grad_mode if mode is not None]
        if stale:
            torch.set_grad_enabled(stale[0])
            self._grad_mode = [None] * len(self.branches)
            self.interrupted_forwards += 1
        self._projections.clear()

    def _before_branch(self, index: int, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._recover()
        if self._mask[index] and module.training:
            self._grad_mode[index] = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
            residual = self._parts[index].residual
            if residual is not None:
                position, name = residual
                self._residual[index] = args[position] if len(args) > position else (kwargs or {}).get(name)

    def _after_branch(self, index: int, output: Any) -> Any:
        previous = self._grad_mode[index]
        if previous is None:
            return None
        self._grad_mode[index] = None
        torch.set_grad_enabled(previous)
        residual, self._residual[index] = self._residual[index], None
        kept = self._projections.keep(index, self.branches[index].name, output, residual is not None)
        if kept is not None:
            return kept
        return detach_outputs(output) if residual is None else pass_residual(output, residual)

    def _after_model(self, module: nn.Module, output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled() and any(self._mask)):
            return None
        return tie_to_anchor(output, self._anchor, MAX_TIE_DEPTH)

    def has_trainable_path(self, mask: MaskSpec | None = None) -> bool:
        """Whether, under ``mask`` (default: this step's), any trainable parameter can get a gradient: one outside
        every branch, or one in a kept branch."""
        dropped = tuple(self.parse_mask(mask)) if mask is not None else self._mask
        inside: set[int] = set()
        for index, (is_dropped, part) in enumerate(zip(dropped, self._parts)):
            params = part.parameters()
            inside.update(id(p) for p in params)
            if any(p.requires_grad for p in self._projections.trained(index, is_dropped, params)):
                return True
        return any(p.requires_grad and id(p) not in inside for p in self._model.parameters())

    @staticmethod
    def of(model: nn.Module) -> "DropBP | None":
        """The engine whose hooks are on ``model`` or on any module inside it, or None."""
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, Hook) and hook.kind == "branch_pre" and hook.engine.attached:
                    return hook.engine
        return None

    # -- per-step API ------------------------------------------------------------------------------------------
    def begin_step(self, step: int | None = None, *, mask: MaskSpec | None = None) -> tuple[bool, ...]:
        """Choose the branches dropped in the next forward pass and return the mask (True = dropped).

        ``step`` defaults to the previous step + 1 (0 at first). The mask comes from the sampler, a pure function
        of ``(seed, step)``, unless ``mask`` forces one.
        """
        step = next_step(step, self.step)
        chosen = self.sampler_at(step).mask(step).tolist() if mask is None else self.parse_mask(mask)
        self._recover()
        live = [module.training for module in self._modules]  # the branch hooks drop only modules in train mode
        self._mask = tuple(bool(m) and is_live for m, is_live in zip(chosen, live))
        self.step = step
        if not (self.attached and any(live)):
            self.uncounted_steps += 1  # the mask cannot take effect: nothing is dropped
            self._warn_uncounted("its hooks are detached (attach() or `with dropbp:`)" if not self.attached else
                                 "the model's decoder blocks are in eval mode; call model.train() before training "
                                 "(from_pretrained and PEFT return models in eval mode)")
            return self._mask
        self.steps_counted += 1
        self.scheduled_sum += self.scheduled_drop_fraction(step)
        self._anchor.grad = None
        if not self.has_trainable_path():
            self.no_trainable_path_steps += 1
        for i, dropped in enumerate(self._mask):
            self.drop_counts[i] += dropped
        if all(self._mask):
            self.all_dropped_steps += 1
        return self._mask

    def _warn_uncounted(self, cause: str) -> None:
        if not self._warned_uncounted:
            self._warned_uncounted = True
            warnings.warn(f"DropBP step {self.step} cannot drop anything: {cause}. Such steps drop nothing and are "
                          "reported as uncounted_steps.", RuntimeWarning, stacklevel=3)

    @property
    def asked_drop_fraction(self) -> float:
        """The FLOPs-weighted average of the per-branch rates (kept up to date by :meth:`set_rates`)."""
        return self._asked

    def scheduled_drop_fraction(self, step: int) -> float:
        """The FLOPs-weighted drop rate asked at ``step``: the rates' average, times the schedule's factor."""
        asked = self._asked
        return asked if self.schedule is None else asked * self.schedule.factor(step, asked)

    def sampler_at(self, step: int) -> Sampler:
        """The sampler of ``step``: the rates scaled by the schedule's factor there (the plain sampler without a
        schedule). Bernoulli samplers are made per step (cheap); pool samplers are kept, one per scheduled rate."""
        if self.schedule is None:
            return self.sampler
        factor = self.schedule.factor(step, self._asked)
        if factor == 1.0 or factor in self._scaled:
            return self._scaled.get(factor, self.sampler)
        sampler = make_sampler(self.sampler.name, [r * factor for r in self.rates], self.flops, self.seed,
                               self.pool_size)
        if sampler.name == "pool":
            self._scaled[factor] = sampler
        return sampler

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> bool:
        """``loss.backward(**kwargs)`` unless this step left nothing to train (every trainable path dropped, e.g.
        LoRA with all branches dropped): then it is skipped and counted in ``skipped_backward_steps``. Returns whether
        a backward ran."""
        ran = bool(loss.requires_grad) and self.has_trainable_path()
        if ran:
            loss.backward(**kwargs)
        else:
            self.skipped_backward_steps += 1
        for callback in self.after_backward_callbacks:
            callback(self, ran)
        return ran

    def parse_mask(self, mask: MaskSpec) -> list[bool]:
        """Turn a mask given as bools/ints per branch, a tensor, branch names, 'all' or 'none' into bools."""
        return parse_mask(mask, [b.name for b in self.branches])

    @contextlib.contextmanager
    def forced_mask(self, mask: MaskSpec) -> Iterator[tuple[bool, ...]]:
        """Apply ``mask`` inside the block without counting a training step (for measurements such as sensitivity);
        the previous mask comes back afterwards."""
        previous = self._mask
        self._mask = tuple(self.parse_mask(mask))
        try:
            yield self._mask
        finally:
            self._mask = previous

    @property
    def mask(self) -> tuple[bool, ...]:
        """The mask in force for the current step (True = dropped)."""
        return self._mask

    def set_rates(self, rates: Sequence[float]) -> None:
        """Replace the per-branch rates (e.g. after a sensitivity allocation); the sampler is rebuilt."""
        self.rates = validate_rates(rates, len(self.branches))
        self.sampler = make_sampler(self.sampler.name, self.rates, self.flops, self.seed, self.pool_size)
        self._asked = drop_fraction(self.flops, self.rates)
        self._scaled.clear()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model."""
        return bool(self._handles)

    def attach(self) -> None:
        """Put the hooks on the branches (done by the constructor; use after :meth:`remove` to wrap again). The mask
        starts as "nothing dropped" until the next :meth:`begin_step`."""
        if self._handles:
            return
        existing = DropBP.of(self._model)
        if existing is not None:
            raise AlreadyWrappedError(existing)
        guard_module_hooks()
        self._mask = (False,) * len(self.branches)
        self._grad_mode = [None] * len(self.branches)
        self._handles.append(self._model.register_forward_pre_hook(Hook(self, "model_pre")))
        self._handles.append(self._model.register_forward_hook(Hook(self, "model_post")))
        for index, part in enumerate(self._parts):
            self._handles.append(part.first.register_forward_pre_hook(Hook(self, "branch_pre", index),
                                                                      with_kwargs=part.residual is not None))
            self._handles.append(part.last.register_forward_hook(Hook(self, "branch_post", index), always_call=True))
            if (layer := self._projections.layers[index]) is not None:
                self._handles += [layer.register_forward_pre_hook(Hook(self, "projection_pre", index)),
                                  layer.register_forward_hook(Hook(self, "projection_post", index), always_call=True)]

    def remove(self) -> None:
        """Take every hook off the model; it then behaves exactly as before wrapping."""
        self._recover()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._mask = (False,) * len(self.branches)

    def __enter__(self) -> "DropBP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        schedule = "" if self.schedule is None else f", schedule={self.schedule.describe()}"
        return (f"DropBP({len(self.branches)} branches of {self.model_type}, sampler={self.sampler.name}, "
                f"drop_fraction={self._asked:.3f}, seed={self.seed}{schedule})")

