"""A technique on a model (DropBP, or LayerDrop, PLD, layer freezing, LISA to compare it with) and what happens
around its every step, in one place for every driver; one entry point that applies a technique by name."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .rate_allocation import RateAllocation
from .branches import find_blocks, layer_index
from .checks import check_int
from .engine import DropBP
from .errors import ConfigError
from .freezing import FrozenLayers, blocks_for_backward_budget, freeze_bottom_layers
from .layerdrop import LayerDrop
from .lisa import LISA
from .policy import StepPolicy
from .sensitivity import Batch

#: ``build(model, drop_rate, options, context) -> Technique``: a technique's builder (see :func:`register_technique`).
Builder = Callable[[nn.Module, float, Any, "BuildContext"], "Technique"]


@dataclass(frozen=True)
class BuildContext:
    """What every builder gets besides its own options: the masks' seed, DropBP's engine options (sampler,
    pool_size, seq_len, schedule) for techniques that make an engine, and how errors call the options."""

    seed: int = 0
    dropbp_options: dict[str, Any] = field(default_factory=dict)
    option_prefix: str = ""


@dataclass(frozen=True)
class Registered:
    """A registered technique: its options dataclass (fields with defaults; ``metadata["help"]`` documents one),
    its builder, and whether it makes a DropBP engine (then drop rates, samplers, schedules and allocation apply)."""

    name: str
    options: type
    build: Builder
    uses_dropbp: bool = False


_REGISTRY: dict[str, Registered] = {}


def register_technique(name: str, options: type, build: Builder, *, uses_dropbp: bool = False) -> None:
    """Make ``name`` a technique that ``dropbp train`` (``dropbp.technique: NAME``, options under ``technique:``),
    the studies and :func:`apply_technique` can run: ``options`` is a dataclass whose fields all have defaults,
    ``build(model, drop_rate, options, context)`` returns the :class:`Technique` on the model."""
    if not (dataclasses.is_dataclass(options) and all(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            for f in dataclasses.fields(options))):
        raise ConfigError(f"technique {name!r}: its options must be a dataclass whose fields all have defaults.")
    _REGISTRY[name] = Registered(name, options, build, uses_dropbp)


def technique_names() -> tuple[str, ...]:
    """Every registered technique, in registration order."""
    return tuple(_REGISTRY)


def registered(name: str, option_prefix: str = "") -> Registered:
    """The registered technique ``name`` (an unknown name is refused, naming the registered ones)."""
    if name not in _REGISTRY:
        raise ConfigError(f"{option_prefix}technique must be one of {', '.join(_REGISTRY)}, got {name!r}.")
    return _REGISTRY[name]


def uses_dropbp(name: str) -> bool:
    """Whether technique ``name`` makes a DropBP engine (False for an unknown name)."""
    return name in _REGISTRY and _REGISTRY[name].uses_dropbp


@dataclass
class Technique:
    """A technique on a model, with what happens around each of its steps. Every driver (``dropbp train``, the
    benchmarks, :class:`~dropbp.recipes.DropBPCallback`) runs one step the same way::

        technique.before_step(step, batch)   # allocation by sensitivity, when this is the step it is due
        ...                                  # the step: policy.begin_step, forward, backward, optimizer
        flops.step(tokens, **technique.step_effect(flops.names))   # what the step cost

    ``policy`` draws each step's mask (DropBP, LayerDrop, PLD); ``frozen`` are the layers that never train;
    ``allocation`` re-derives DropBP's rates from branch sensitivities."""

    name: str
    policy: StepPolicy | None = None
    frozen: FrozenLayers | None = None
    allocation: RateAllocation | None = None

    @property
    def engine(self) -> DropBP | None:
        """The DropBP engine, when the policy is one (its rates are allocated and checkpointed)."""
        return self.policy if isinstance(self.policy, DropBP) else None

    def before_step(self, step: int, batch: Batch) -> None:
        """Before step ``step``'s forward: allocate by sensitivity on ``batch`` (token ids, or a mapping of the
        model's inputs: give it the labels the run trains on) when the allocation is due."""
        if self.allocation is not None:
            self.allocation.before_step(step, batch)

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
                    options: Mapping[str, Any] | Any = None, option_prefix: str = "",
                    **dropbp_options: Any) -> Technique:
    """Apply the registered ``technique`` to ``model`` at ``drop_rate`` (DropBP's rate, and the budget others are
    sized by), with its ``options`` (its options dataclass, or a mapping of its fields; none: the defaults) and,
    for a technique that makes an engine, DropBP's ``dropbp_options`` (sampler, pool_size, seq_len, schedule).
    Errors name the options with ``option_prefix`` in front."""
    entry = registered(technique, option_prefix)
    if options is None or isinstance(options, Mapping):
        names = {f.name for f in dataclasses.fields(entry.options)}
        unknown = sorted(set(options or {}) - names)
        if unknown:
            raise ConfigError(f"unknown {option_prefix}technique option(s) {', '.join(unknown)} for {technique}; it "
                              f"takes: {', '.join(sorted(names)) or 'none'}.")
        options = entry.options(**(options or {}))
    context = BuildContext(seed, dict(dropbp_options) if entry.uses_dropbp else {}, option_prefix)
    return entry.build(model, drop_rate, options, context)


# -- the built-in techniques: each an options dataclass, a builder and one registration line --------------------
def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class NoOptions:
    """A technique with no options of its own."""


@dataclass
class PLDOptions:
    """Progressive Layer Dropping's schedule."""

    theta_bar: float = _help("the keep probability the schedule falls to (deepest block)", 0.5)
    gamma: float = _help("how fast the keep probability falls (per step)", 0.001)


@dataclass
class FreezeOptions:
    """How many top blocks train."""

    train_top_layers: int | None = _help("blocks trained from the top (none: for freeze, as many as give the backward "
                                         "FLOPs of DropBP at dropbp.drop_rate; for freeze-dropbp, the top half)")


@dataclass
class LISAOptions:
    """How many blocks train at a time, and for how long."""

    layers: int = _help("decoder blocks trained at a time, drawn at random", 2)
    period: int = _help("steps between draws", 5)


def _lisa(model: nn.Module, rate: float, options: LISAOptions, context: BuildContext) -> Technique:
    prefix = context.option_prefix
    blocks = len(find_blocks(model))
    check_int(f"{prefix}layers", options.layers, 1, blocks, meaning="the model's decoder blocks")
    check_int(f"{prefix}period", options.period, 1)
    return Technique("lisa", policy=LISA(model, options.layers, options.period, seed=context.seed))


def _dropbp(model: nn.Module, rate: float, options: NoOptions, context: BuildContext) -> Technique:
    return Technique("dropbp", policy=DropBP(model, rate, seed=context.seed, **context.dropbp_options))


def _layerdrop(model: nn.Module, rate: float, options: NoOptions, context: BuildContext) -> Technique:
    return Technique("layerdrop", policy=LayerDrop(model, rate, seed=context.seed))


def _pld(model: nn.Module, rate: float, options: PLDOptions, context: BuildContext) -> Technique:
    return Technique("pld", policy=LayerDrop.progressive(model, theta_bar=options.theta_bar, gamma=options.gamma,
                                                         seed=context.seed))


def _freeze(model: nn.Module, rate: float, options: FreezeOptions, context: BuildContext) -> Technique:
    top = options.train_top_layers
    if top is None:
        top = blocks_for_backward_budget(len(find_blocks(model)), rate)
    return Technique("freeze", frozen=freeze_bottom_layers(model, top,
                                                           name=f"{context.option_prefix}train_top_layers"))


def _freeze_dropbp(model: nn.Module, rate: float, options: FreezeOptions, context: BuildContext) -> Technique:
    blocks = [name for name, _ in find_blocks(model)]
    name = f"{context.option_prefix}train_top_layers"
    top = check_int(name, max(1, len(blocks) // 2) if options.train_top_layers is None else options.train_top_layers,
                    1, len(blocks), meaning="the model's decoder blocks")
    trained = [layer_index(block + ".") for block in blocks[len(blocks) - top:]]  # a block name ends in its index
    policy = DropBP(model, rate, seed=context.seed, layers=trained, **context.dropbp_options)  # checked before freezing
    return Technique("freeze-dropbp", policy=policy, frozen=freeze_bottom_layers(model, top, name=name))


register_technique("dropbp", NoOptions, _dropbp, uses_dropbp=True)
register_technique("layerdrop", NoOptions, _layerdrop)
register_technique("pld", PLDOptions, _pld)
register_technique("freeze", FreezeOptions, _freeze)
register_technique("freeze-dropbp", FreezeOptions, _freeze_dropbp, uses_dropbp=True)
register_technique("lisa", LISAOptions, _lisa)
