"""LayerDrop and Progressive Layer Dropping: the alternatives to DropBP that skip whole blocks, forward and backward.

A dropped block is the identity on the residual stream for that step: neither its forward nor its backward runs, so
it saves more compute per dropped block than DropBP (which keeps every forward), but the forward pass itself
changes. Kept blocks' residual updates are scaled by ``1 / keep_probability`` during training (``rescale=True``,
the stochastic-depth rule applied at training time, as inverted dropout does), so the expected update equals the
full model's and evaluation runs every block unscaled.

Which blocks drop is a pure function of ``(seed, step)``, like DropBP's masks: every rank and a resumed run agree.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .branches import find_blocks
from .errors import ConfigError
from .checks import check_seed
from .samplers import next_step, step_generator
from .state import check_state

#: ``keep_probability(step, layer_position, num_layers)`` for layer positions 1..num_layers (1 = nearest the input).
KeepSchedule = Callable[[int, int, int], float]
#: The counters behind :meth:`LayerDrop.realized_drop_fraction`, kept in :meth:`LayerDrop.state_dict`.
LAYERDROP_COUNTERS = ("dropped_blocks", "steps_counted", "skipped_backward_steps")


def pld_keep_probability(step: int, position: int, num_layers: int, *, theta_bar: float = 0.5,
                         gamma: float = 0.001) -> float:
    """Progressive Layer Dropping's keep probability of the block at ``position`` (1..L) at ``step``.

    Over time the global keep probability falls from 1 towards ``theta_bar``: ``theta(t) = (1 - theta_bar) *
    exp(-gamma * t) + theta_bar``. Over depth, deeper blocks are dropped more: ``p_l(t) = 1 - l / L * (1 -
    theta(t))``, so the first block keeps ``1 - (1 - theta) / L`` and the last keeps ``theta``.
    """
    if not 1 <= position <= num_layers:
        raise ConfigError(f"position must be in 1..{num_layers}, got {position}.")
    theta = (1.0 - theta_bar) * math.exp(-gamma * step) + theta_bar
    return 1.0 - position / num_layers * (1.0 - theta)


def pld_mean_drop(theta_bar: float, gamma: float, num_layers: int, total_steps: int) -> float:
    """Average fraction of blocks PLD drops over a run of ``total_steps`` steps (closed form of the mean over steps
    and depths of ``1 - p_l(t)``)."""
    depth = (num_layers + 1) / (2 * num_layers)  # mean of l / L over l = 1..L
    if gamma * total_steps == 0:
        decay = 1.0
    else:
        decay = (1 - math.exp(-gamma * total_steps)) / (gamma * total_steps)  # mean of exp(-gamma t) over the run
    return depth * (1.0 - theta_bar) * (1.0 - decay)


def pld_theta_for_drop(target: float, gamma: float, num_layers: int, total_steps: int) -> float:
    """The ``theta_bar`` at which PLD drops ``target`` of the blocks on average over the run (so that it can be
    compared with another method at equal FLOPs). Raises :class:`ConfigError` when no ``theta_bar`` in [0, 1] does."""
    most = pld_mean_drop(0.0, gamma, num_layers, total_steps)
    if not 0 <= target <= most:
        raise ConfigError(f"PLD with gamma={gamma} over {total_steps} steps and {num_layers} layers drops at most "
                          f"{most:.3f} of the blocks on average; target {target} is out of reach (raise gamma).")
    return 1.0 - target / most  # pld_mean_drop is linear in (1 - theta_bar)


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    raise ConfigError("LayerDrop could not find the block's input hidden states (first argument or hidden_states=).")


class LayerDrop:
    """Skip whole decoder blocks at random during training: block ``l`` is dropped with probability ``1 -
    keep(step, l)``, where ``keep`` is ``1 - drop_rate`` for every block (LayerDrop) or a schedule such as
    :func:`pld_keep_probability` (Progressive Layer Dropping, :meth:`progressive`).

    Used like :class:`~dropbp.core.DropBP`: ``begin_step(step)`` before the forward pass, ``backward(loss)``
    (skipped when nothing trainable was left in the graph), :meth:`remove` to restore the model. In eval mode
    nothing is dropped or scaled.
    """

    left_out = "skipped"  # what the savings line says of the share of blocks it reports

    def __init__(self, model: nn.Module, drop_rate: float = 0.2, *, seed: int = 0, rescale: bool = True,
                 schedule: KeepSchedule | None = None) -> None:
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate <= 1:
            raise ConfigError(f"LayerDrop drop_rate must be a number in [0, 1], got {drop_rate!r}.")
        self.seed = check_seed(seed)
        self.blocks = find_blocks(model)
        self.drop_rate, self.rescale = float(drop_rate), rescale
        self.schedule: KeepSchedule = schedule or (lambda step, position, layers: 1.0 - self.drop_rate)
        self.step: int | None = None
        self._mask: tuple[bool, ...] = (False,) * len(self.blocks)
        self._keep: tuple[float, ...] = (1.0,) * len(self.blocks)
        self._model = model
        self.dropped_blocks = 0
        self.steps_counted = 0
        self.skipped_backward_steps = 0
        self.name = f"LayerDrop(drop_rate={self.drop_rate})"
        self._attached = False
        self.attach()

    @classmethod
    def progressive(cls, model: nn.Module, *, theta_bar: float = 0.5, gamma: float = 0.001, seed: int = 0,
                    rescale: bool = True) -> "LayerDrop":
        """Progressive Layer Dropping: :func:`pld_keep_probability` over time and depth."""
        if not 0 <= theta_bar <= 1 or gamma < 0:
            raise ConfigError(f"PLD needs theta_bar in [0, 1] and gamma >= 0, got {theta_bar}, {gamma}.")
        engine = cls(model, 0.0, seed=seed, rescale=rescale,
                     schedule=lambda step, position, layers: pld_keep_probability(step, position, layers,
                                                                                  theta_bar=theta_bar, gamma=gamma))
        engine.name = f"PLD(theta_bar={theta_bar}, gamma={gamma})"
        return engine

    # -- masks ---------------------------------------------------------------------------------------------------
    def keep_probabilities(self, step: int) -> list[float]:
        """Each block's keep probability at ``step``."""
        n = len(self.blocks)
        return [self.schedule(step, position, n) for position in range(1, n + 1)]

    def mask_at(self, step: int) -> tuple[bool, ...]:
        """The blocks dropped at ``step`` (True = dropped): a pure function of ``(seed, step)``."""
        return self._draw(step, self.keep_probabilities(step))

    def _draw(self, step: int, keep: list[float]) -> tuple[bool, ...]:
        generator = step_generator(self.seed, step, "layerdrop")
        draws = torch.rand(len(self.blocks), generator=generator, dtype=torch.float64).tolist()
        return tuple(d >= k for d, k in zip(draws, keep))

    def begin_step(self, step: int | None = None) -> tuple[bool, ...]:
        """Draw the next forward pass's dropped blocks (``step`` defaults to the previous one + 1)."""
        self.step = next_step(step, self.step)
        keep = self.keep_probabilities(self.step)
        self._keep = tuple(keep)
        self._mask = self._draw(self.step, keep)
        if self._model.training and self._attached:
            self.steps_counted += 1
            self.dropped_blocks += sum(self._mask)
        return self._mask

    @property
    def mask(self) -> tuple[bool, ...]:
        """The blocks dropped in the current step (True = dropped)."""
        return self._mask

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state a resumed run needs (the last step and the counters; masks are a function of
        (seed, step) and the schedule)."""
        return {"blocks": [name for name, _ in self.blocks], "step": self.step, **{k: getattr(self, k) for k in
                                                                                  LAYERDROP_COUNTERS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (refused, with nothing changed, for another model's blocks)."""
        check_state(type(self).__name__, state, ("blocks", "step", *LAYERDROP_COUNTERS),
                    names=[name for name, _ in self.blocks], saved_names="blocks")
        self.step = None if state["step"] is None else int(state["step"])
        for name in LAYERDROP_COUNTERS:
            setattr(self, name, int(state[name]))

    def realized_drop_fraction(self) -> float:
        """Fraction of blocks dropped over the counted steps."""
        return self.dropped_blocks / max(1, self.steps_counted * len(self.blocks))

    def step_effect(self, names: Sequence[str], realised: bool = False) -> dict[str, list[float]]:
        """This step's skipped blocks (``realised``: the realised share, every block alike) as :meth:`StepFlops.step`'s
        ``skipped_blocks``; ``names`` (the branches) are not needed."""
        return {"skipped_blocks": [self.realized_drop_fraction() if realised else float(m) for m in self._mask]}

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: the method, the seed, the step counts and the fraction of blocks dropped."""
        return {"method": self.name, "seed": self.seed, "steps": self.steps_counted,
                "dropped_blocks": self.dropped_blocks, "skipped_backward_steps": self.skipped_backward_steps,
                "realized_drop_fraction": self.realized_drop_fraction(),
                "blocks": [name for name, _ in self.blocks]}

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> bool:
        """``loss.backward()``, unless the step left nothing trainable in the graph (then skipped and counted)."""
        if not loss.requires_grad:
            self.skipped_backward_steps += 1
            return False
        loss.backward(**kwargs)
        return True

    # -- the blocks' forward -------------------------------------------------------------------------------------
    def _wrap(self, index: int, block: nn.Module) -> Callable[..., Any]:
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if not block.training:
                return original(*args, **kwargs)
            hidden = _hidden_states(args, kwargs)
            if self._mask[index]:
                return hidden if not getattr(block, "_dropbp_tuple_output", False) else (hidden,)
            output = original(*args, **kwargs)
            keep = self._keep[index]
            if not self.rescale or keep >= 1.0 or keep <= 0.0:
                return output
            if isinstance(output, tuple):
                object.__setattr__(block, "_dropbp_tuple_output", True)
                return (hidden + (output[0] - hidden) / keep, *output[1:])
            return hidden + (output - hidden) / keep

        return forward

    def attach(self) -> None:
        """Wrap the blocks' forward (done by the constructor)."""
        if self._attached:
            return
        for index, (_, block) in enumerate(self.blocks):
            if "forward" in block.__dict__:
                raise ConfigError(f"block {self.blocks[index][0]} already has a patched forward (another LayerDrop?);"
                                  " remove() that one first.")
            block.forward = self._wrap(index, block)
        self._attached = True

    def remove(self) -> None:
        """Restore the blocks' own forward."""
        for _, block in self.blocks:
            block.__dict__.pop("forward", None)
        self._attached = False
        self._mask = (False,) * len(self.blocks)

    @property
    def attached(self) -> bool:
        """Whether the blocks are wrapped."""
        return self._attached

    def __repr__(self) -> str:
        return f"{self.name[:-1]}, {len(self.blocks)} blocks, seed={self.seed})"


def equal_flops_layerdrop_rate(dropbp_rate: float, backward_ratio: float) -> float:
    """The LayerDrop rate whose training FLOPs per step equal DropBP's at ``dropbp_rate``.

    Per block, a step costs ``1 + backward_ratio`` forward-equivalents (``backward_ratio`` is 2 for full fine-tuning,
    1 for LoRA). DropBP saves ``p * backward_ratio``; LayerDrop saves ``q * (1 + backward_ratio)``.
    """
    return dropbp_rate * backward_ratio / (1.0 + backward_ratio)

