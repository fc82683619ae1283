"""DropBP inside Hugging Face ``Trainer`` (and optimum-habana's ``GaudiTrainer``), without forking transformers.

Two lines::

    dropbp = DropBP(model, drop_rate=0.75)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DropBPCallback(dropbp)])

Or one, where the trainer builds the model it trains (TRL's ``SFTTrainer`` given a ``peft_config`` wraps the model
in PEFT itself): ``callbacks=[DropBPCallback(drop_rate=0.75)]`` attaches DropBP to the trainer's model when training
begins (``callback.dropbp`` is the engine from then on).

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

from transformers import TrainerCallback

from dropbp.core.engine import DropBP
from dropbp.core.errors import ConfigError


class DropBPCallback(TrainerCallback):
    """Begin each optimizer step of a ``Trainer`` with its DropBP mask; report the realised rates at the end."""

    def __init__(self, dropbp: DropBP | None = None, **engine: Any) -> None:
        if dropbp is not None and engine:
            raise ConfigError("DropBPCallback takes an engine or the engine's settings (drop_rate=..., seed=...), "
                              "not both.")
        self.dropbp: DropBP | None = dropbp
        self.engine_settings = engine

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Without an engine given: attach DropBP to the model the trainer trains (or take the one already on it)."""
        if self.dropbp is None:
            if model is None:
                raise ConfigError("DropBPCallback: the trainer passed no model to attach DropBP to; create the engine "
                                  "yourself, DropBPCallback(DropBP(model, drop_rate=...)).")
            self.dropbp = DropBP.of(model) or DropBP(model, **self.engine_settings)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Draw the mask of optimizer step ``state.global_step`` (a pure function of the seed and the step)."""
        if self.dropbp is not None:
            self.dropbp.begin_step(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Add the realised FLOPs-weighted drop fraction to Trainer's logs."""
        if logs is not None and self.dropbp is not None and self.dropbp.steps_counted:
            logs["dropbp_realized_drop_fraction"] = round(self.dropbp.realized_drop_fraction(), 4)
