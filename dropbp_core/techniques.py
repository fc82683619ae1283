"""One entry point for DropBP and the alternatives it is compared with: LayerDrop, PLD and layer freezing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .branches import find_blocks, layer_index
from .checks import check_int
from .engine import DropBP
from .errors import ConfigError
from .freezing import FrozenLayers, blocks_for_backward_budget, freeze_bottom_layers
from .layerdrop import LayerDrop
from .policy import StepPolicy

TECHNIQUES: tuple[str, ...] = ("dropbp", "layerdrop", "pld", "freeze", "freeze-dropbp")
#: The techniques whose policy is a :class:`DropBP` engine (drop rates, samplers, schedules and allocation apply).
DROPBP_TECHNIQUES: tuple[str, ...] = ("dropbp", "freeze-dropbp")


@dataclass
class Applied:
    """What :func:`apply_technique` put on the model: a per-step policy (DropBP, LayerDrop/PLD) or frozen layers."""

    technique: str
    policy: StepPolicy | None = None
    frozen: FrozenLayers | None = None

    def remove(self) -> None:
        """Undo it: hooks off, forwards restored, frozen parameters trainable again."""
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
                    option_prefix: str = "", **dropbp_options: Any) -> Applied:
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
        return Applied(technique, policy=DropBP(model, drop_rate, seed=seed, **dropbp_options))
    if technique == "layerdrop":
        return Applied(technique, policy=LayerDrop(model, drop_rate, seed=seed))
    if technique == "pld":
        return Applied(technique, policy=LayerDrop.progressive(model, theta_bar=pld_theta_bar, gamma=pld_gamma,
                                                               seed=seed))
    if technique == "freeze":
        if train_top_layers is None:
            train_top_layers = blocks_for_backward_budget(len(find_blocks(model)), drop_rate)
        return Applied(technique, frozen=freeze_bottom_layers(model, train_top_layers,
                                                              name=f"{option_prefix}train_top_layers"))
    if technique == "freeze-dropbp":
        blocks = [name for name, _ in find_blocks(model)]
        top = check_int(f"{option_prefix}train_top_layers", max(1, len(blocks) // 2) if train_top_layers is None
                        else train_top_layers, 1, len(blocks), meaning="the model's decoder blocks")
        trained = [layer_index(name + ".") for name in blocks[len(blocks) - top:]]  # a block name ends in its index
        policy = DropBP(model, drop_rate, seed=seed, layers=trained, **dropbp_options)  # validated before freezing
        return Applied(technique, policy=policy, frozen=freeze_bottom_layers(model, top,
                                                                             name=f"{option_prefix}train_top_layers"))
    raise ConfigError(f"{option_prefix}technique must be one of {', '.join(TECHNIQUES)}, got {technique!r}.")
