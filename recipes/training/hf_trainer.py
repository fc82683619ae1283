"""DropBP inside Hugging Face ``Trainer`` (and optimum-habana's ``GaudiTrainer``), without forking transformers.

Two lines::

    dropbp = DropBP(model, drop_rate=0.75)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DropBPCallback(dropbp)])

Or one, where the trainer builds the model it trains (TRL's ``SFTTrainer`` given a ``peft_config`` wraps the model
in PEFT itself): ``callbacks=[DropBPCallback(drop_rate=0.75)]`` attaches DropBP to the trainer's model when training
begins (``callback.dropbp`` is the engine from then on).

The same settings as ``dropbp train``: ``DropBPCallback(drop_rate=0.5, schedule=RateSchedule(...))`` moves the
rate over training; ``allocation="sensitivity"`` (with ``allocate_at``, ``sensitivity``, ``allocator``, or an
:class:`~dropbp.core.AllocationSpec` with every knob of ``dropbp train``) measures
branch sensitivities at that share of ``max_steps`` on the step's first micro-batch exactly as the trainer feeds it,
labels included, and allocates the rates, through :class:`~dropbp.core.techniques.Technique`, as in ``dropbp
train``.

The callback draws the mask at the start of every optimizer step (``state.global_step``): all micro-batches of a
gradient-accumulation step share it, as in ``dropbp train``. Steps where the mask leaves nothing trainable run
through ``accelerator.backward`` without error (the engine ties the outputs to its anchor, see
:class:`dropbp.core.DropBP`) and are counted in ``dropbp.report()["no_trainable_path_steps"]``. With DDP, keep
``ddp_find_unused_parameters=True`` (Trainer's default for a model without activation checkpointing): dropped
branches' parameters get no gradient on that step, on every rank alike, because the masks depend only on
(seed, step).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from dropbp.core.assembly import AllocationSpec, TechniqueSpec, build_technique
from dropbp.core.engine import DropBP
from dropbp.core.errors import ConfigError
from dropbp.core.techniques import Technique


class DropBPCallback(TrainerCallback):
    """Begin each optimizer step of a ``Trainer`` with its DropBP mask, run the technique's work before the step
    (sensitivity allocation), and report the realised rates in the logs."""

    def __init__(self, dropbp: DropBP | None = None, *, allocation: str | AllocationSpec = "uniform",
                 allocate_at: float = 0.1, sensitivity: str = "fast", allocator: str = "paper", **engine: Any) -> None:
        if dropbp is not None and engine:
            raise ConfigError("DropBPCallback takes an engine or the engine's settings (drop_rate=..., seed=...), "
                              "not both.")
        self.dropbp: DropBP | None = dropbp
        self.engine_settings = engine
        self.allocation = (allocation if isinstance(allocation, AllocationSpec)
                           else AllocationSpec(allocation, allocate_at, sensitivity, allocator))
        self.technique: Technique | None = None
        self._step = 0
        self._before_pending = False
        self._handles: list[Any] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Attach DropBP to the model the trainer trains (or take the one given or already on it), and the hook that
        hands the technique each step's first batch."""
        if self.dropbp is None:
            if model is None:
                raise ConfigError("DropBPCallback: the trainer passed no model to attach DropBP to; create the engine "
                                  "yourself, DropBPCallback(DropBP(model, drop_rate=...)).")
            self.dropbp = DropBP.of(model)
        if self.dropbp is None:  # built here, as every driver builds it
            settings = dict(self.engine_settings)
            rate, seed = settings.pop("drop_rate", 0.5), settings.pop("seed", 0)
            spec = TechniqueSpec("dropbp", rate, None, settings, self.allocation)
            self.technique = build_technique(model, spec, total_steps=state.max_steps, seed=seed)
            self.dropbp = None if self.technique is None else self.technique.engine  # rate 0: exact backprop
        else:
            self.technique = self.allocation.attach(Technique("dropbp", policy=self.dropbp), model,
                                                    total_steps=state.max_steps, seed=self.dropbp.seed)
        if model is not None:
            self._handles = [model.register_forward_pre_hook(self._before_forward, with_kwargs=True)]

    def _before_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._before_pending and self.technique is not None and module.training and torch.is_grad_enabled():
            self._before_pending = False  # the measurement runs forwards of its own
            self.technique.before_step(self._step, dict(kwargs) if kwargs else {"input_ids": args[0]})

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Draw the mask of optimizer step ``state.global_step`` (a pure function of the seed and the step)."""
        self._step = state.global_step
        self._before_pending = True
        if self.dropbp is not None:
            self.dropbp.begin_step(self._step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Add the realised FLOPs-weighted drop fraction to Trainer's logs."""
        if logs is not None and self.dropbp is not None and self.dropbp.steps_counted:
            logs["dropbp_realized_drop_fraction"] = round(self.dropbp.realized_drop_fraction(), 4)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Take this callback's hooks off the model (the engine stays: ``callback.dropbp.remove()`` undoes it)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.technique is not None and self.technique.allocation is not None:
            self.technique.allocation.close()
