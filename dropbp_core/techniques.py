"""A technique on a model (DropBP, or LayerDrop, PLD, layer freezing to compare it with) and what happens around\nits every step, in one place for every driver; one entry point that applies a technique by name."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .adaptive_rate import AdaptiveRate
from .allocation_schedule import AllocationSchedule
from .branches import find_blocks, layer_index
from .checks import check_int
from .engine import DropBP
from .errors import ConfigError
from .freezing import FrozenLayers, blocks_for_backward_budget, freeze_bottom_layers
from .layerdrop import LayerDrop
from .policy import StepPolicy
from .sensitivity import Batch

TECHNIQUES: tuple[str, ...] = ("dropbp", "layerdrop", "pld", "freeze", "freeze-dropbp")
#: The techniques whose policy is a :class:`DropBP` engine (drop rates, samplers, schedules and allocation apply).
DROPBP_TECHNIQUES: tuple[str, ...] = ("dropbp", "freeze-dropbp")


@dataclass
class Technique:
    """A technique on a model, with what happens around each of its steps. Every driver (``dropbp train``, the
    benchmarks, :class:`~dropbp.recipes.DropBPCallback`) runs one step the same way::

        technique.before_step(step, batch)   # allocation by sensitivity, when this is the step it is due
        ...                                  # the step: policy.begin_step, forward, backward, optimizer
        technique.after_step(step, loss)     # the adaptive rate takes the step's loss
        flops.step(tokens, **technique.step_effect(flops.names))   # what the step cost

    ``policy`` draws each step's mask (DropBP, LayerDrop, PLD); ``frozen`` are the layers that never train;
    ``allocation`` re-derives DropBP's rates from branch sensitivities."""

    name: str
    policy: StepPolicy | None = None
    frozen: FrozenLayers | None = None
    allocation: AllocationSchedule | None = None

    @property
    def engine(self) -> DropBP | None:
        """The DropBP engine, when the policy is one (its rates are allocated and checkpointed)."""
        return self.policy if isinstance(self.policy, DropBP) else None

    @property
    def adaptive(self) -> AdaptiveRate | None:
        """The adaptive rate controller that :meth:`after_step` feeds, if the engine has one."""
        controller = self.engine.schedule if self.engine is not None else None
        return controller if isinstance(controller, AdaptiveRate) else None

    def before_step(self, step: int, batch: Batch) -> None:
        """Before step ``step``'s forward: allocate by sensitivity on ``batch`` (token ids, or a mapping of the
        model's inputs: give it the labels the run trains on) when the allocation is due."""
        if self.allocation is not None:
            self.allocation.before_step(step, batch)

    def after_step(self, step: int, loss: float) -> None:
        """After step ``step``: the adaptive rate observes its loss (with several ranks: the mean over ranks)."""
        if self.adaptive is not None:
            self.adaptive.observe(step, loss)

    def step_effect(self, names: Sequence[str], realised: bool = False) -> dict[str, Any]:
        """What this step left out (``realised``: the steps so far on average), as the keyword arguments of
        :meth:`StepFlops.step` over its branch ``names``: frozen bottom blocks and the policy's own effect."""
        effect: dict[str, Any] = {"trained_from": len(self.frozen.frozen_blocks) if self.frozen is not None else 0}
        if self.policy is not None:
            effect.update(self.policy.step_effect(names, realised))
        return effect

    def remove(self) -> None:
        """Undo it: hooks off, forwards restored, frozen parameters trainable again."""
        if self.allocation is not None:
            self.allocation.close()
        if self.policy is not None:
            self.policy.remove()
        if self.frozen is not None:
            self.frozen.unfreeze()

    def describe(self) -> str:
        """One line for logs."""
        if self.frozen is not None:
            trained, frozen = len(self.frozen.trained_blocks), len(self.frozen.frozen_blocks)
            frozen_text = f"layer freezing (training the top {trained} of {trained + frozen} blocks)"
            return frozen_text if self.policy is None else f"{frozen_text}, {self.policy!r} above"
        return repr(self.policy)


def apply_technique(model: nn.Module, technique: str, drop_rate: float, *, seed: int = 0,
                    pld_theta_bar: float = 0.5, pld_gamma: float = 0.001, train_top_layers: int | None = None,
                    option_prefix: str = "", **dropbp_options: Any) -> Technique:
    """Apply ``technique`` to ``model``:

    - ``dropbp``: :class:`DropBP` at ``drop_rate`` (``dropbp_options``: sampler, pool_size, seq_len, ...);
    - ``layerdrop``: :class:`LayerDrop`, each block skipped with probability ``drop_rate``;
    - ``pld``: :meth:`LayerDrop.progressive` with ``pld_theta_bar`` and ``pld_gamma``;
    - ``freeze``: :func:`freeze_bottom_layers`, training ``train_top_layers`` top blocks (default: as many as give
      the backward FLOPs of DropBP at ``drop_rate``);
    - ``freeze-dropbp``: both at once: the bottom blocks frozen, :class:`DropBP` at ``drop_rate`` on the branches of
      the ``train_top_layers`` trained top blocks (default: the top half).

    Errors name the options with ``option_prefix`` in front (``"dropbp."`` for a recipe's section).
    """
    if technique == "dropbp":
        return Technique(technique, policy=DropBP(model, drop_rate, seed=seed, **dropbp_options))
    if technique == "layerdrop":
        return Technique(technique, policy=LayerDrop(model, drop_rate, seed=seed))
    if technique == "pld":
        return Technique(technique, policy=LayerDrop.progressive(model, theta_bar=pld_theta_bar, gamma=pld_gamma,
                                                               seed=seed))
    if technique == "freeze":
        if train_top_layers is None:
            train_top_layers = blocks_for_backward_budget(len(find_blocks(model)), drop_rate)
        return Technique(technique, frozen=freeze_bottom_layers(model, train_top_layers,
                                                              name=f"{option_prefix}train_top_layers"))
    if technique == "freeze-dropbp":
        blocks = [name for name, _ in find_blocks(model)]
        top = check_int(f"{option_prefix}train_top_layers", max(1, len(blocks) // 2) if train_top_layers is None
                        else train_top_layers, 1, len(blocks), meaning="the model's decoder blocks")
        trained = [layer_index(name + ".") for name in blocks[len(blocks) - top:]]  # a block name ends in its index
        policy = DropBP(model, drop_rate, seed=seed, layers=trained, **dropbp_options)  # validated before freezing
        return Technique(technique, policy=policy, frozen=freeze_bottom_layers(model, top,
                                                                             name=f"{option_prefix}train_top_layers"))
    raise ConfigError(f"{option_prefix}technique must be one of {', '.join(TECHNIQUES)}, got {technique!r}.")
