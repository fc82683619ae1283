"""The ``dropbp`` section of a recipe: the technique, its rate, how masks are drawn, how rates are allocated, and
the drop rate over training (``dropbp.schedule``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dropbp.core.allocation import validate_drop_rate
from dropbp.core.rate_allocation import ALLOCATION_MODES
from dropbp.core.checks import check_int, check_seed
from dropbp.core.rate_schedule import RATE_SCHEDULES
from dropbp.core.samplers import SAMPLERS
from dropbp.core.sensitivity import SENSITIVITY_METHODS
from dropbp.core.techniques import technique_names, uses_dropbp
from dropbp.recipes.config.fields import (MAX_SIZE, POSITIVE_NUMBER, check_choice, check_declared, check_number, setting,
                                         yaml_key)
from dropbp.recipes.config.loader import Problems


def _int(p: Problems, name: str, value: Any, low: int, high: int | None = None) -> None:
    p.check(check_int, name, value, low, high)


@dataclass
class DropScheduleSection:
    """How the drop rate moves over training (``dropbp.schedule.*``): from ``dropbp.drop_rate`` at the start."""

    kind: str = setting("constant", "constant (drop_rate all along); linear or cosine decay to end_rate; steps "
                                    "(stages plateaus from drop_rate down to end_rate)",
                        choices=RATE_SCHEDULES)
    end_rate: float = setting(0.0, "the rate at the end of training (0: exact backprop at the end)")
    warmup_steps: int = setting(0, "optimizer steps at rate 0 (exact backprop) before the schedule starts")
    stages: int = setting(4, "steps: the number of plateaus")
    levels: int | None = setting(None, "quantise linear and cosine to this many rates (none: 4 with the pool "
                                       "sampler, so compiled graphs stay at most pool_size * levels + 1; "
                                       "continuous with bernoulli)")

    def check(self, p: Problems) -> None:
        """Record every problem of this section."""
        if self.kind == "adaptive":
            p.add("dropbp.schedule.kind 'adaptive' was removed: it never adopted a rate in any study, so it ran as "
                  "DropBP off plus its probes; use constant (with warmup_steps for exact steps first), linear, "
                  "cosine or steps.")
        else:
            check_declared(self, p, yaml_key("dropbp.schedule"))
        p.check(validate_drop_rate, self.end_rate, "dropbp.schedule.end_rate")
        _int(p, "dropbp.schedule.warmup_steps", self.warmup_steps, 0)
        _int(p, "dropbp.schedule.stages", self.stages, 2)
        if self.levels is not None:
            _int(p, "dropbp.schedule.levels", self.levels, 2)

    @property
    def is_constant(self) -> bool:
        """Whether the rate never moves (today's behaviour)."""
        return self.kind == "constant" and self.warmup_steps == 0


@dataclass
class DropBPSection:
    """Dropping backward propagation: the target rate, how masks are drawn and how rates are allocated."""

    drop_rate: float = setting(0.0, "target average drop rate in [0, 1) (a FLOPs budget); 0, the default, is DropBP "
                                    "off, the one setting that lost accuracy in none of the studies (README, "
                                    "'Choose a setting')")
    sampler: str = setting("auto", "bernoulli (independent draws, as the paper), pool (K fixed masks: exact rates, "
                                   "at most K compiled graphs), auto (pool on Gaudi, bernoulli elsewhere)",
                           choices=("auto", *SAMPLERS))
    pool_size: int = setting(8, "masks in the pool sampler (K)")
    allocation: str = setting("auto", "auto (sensitivity for DropBP on one process, best on the string tasks; uniform "
                                      "with several ranks and for the other techniques); uniform rates; sensitivity "
                                      "(one process only for now; measured once at "
                                      "allocate_at of training, as the paper); depth (from the first step, by "
                                      "position alone: the lower a branch, the more often it drops, since fewer "
                                      "blocks' gradients pass through it); online (refreshed every "
                                      "reallocate_every steps)", choices=("auto", *ALLOCATION_MODES))
    allocate_at: float = setting(0.1, "fraction of training at which sensitivities are measured")
    sensitivity: str = setting("fast", "estimator: fast (1 pass) or exact (2L+1 passes)", choices=SENSITIVITY_METHODS)
    allocator: str = setting("paper", "paper (greedy, steps of 0.1) or optimal", choices=("paper", "optimal"))
    reallocate_every: int = setting(50, "steps between re-allocations with allocation online")
    seed: int | None = setting(None, "seed of the masks (none: train.seed)")
    train_output_projection: bool = setting(False, "a dropped branch still trains the layer it ends with (o_proj, "
                                                   "down_proj or their adapters) with its exact gradient; costs that "
                                                   "layer's weight gradients and keeps its input")
    technique: str = setting("dropbp", "the technique: dropbp (drop the backward of branches); or one to compare with, "
                                       "its options under the recipe's technique section: layerdrop (skip whole "
                                       "blocks, forward and backward, with probability drop_rate), pld (progressive "
                                       "layer dropping: technique.theta_bar, technique.gamma), freeze (train only the "
                                       "top technique.train_top_layers blocks), freeze-dropbp (both: the bottom "
                                       "frozen, DropBP at drop_rate above), lisa (technique.layers random "
                                       "blocks train, redrawn every technique.period steps); or any registered "
                                       "technique")
    schedule: DropScheduleSection = setting(help="the drop rate over training", default_factory=DropScheduleSection)
    advise: bool = setting(False, "experimental: dropbp train first runs dropbp advise's probe on this recipe (about "
                                  "advise_budget minutes) and trains with what it recommends, a drop rate and "
                                  "allocation (in place of drop_rate and allocation here) or DropBP off; the advice "
                                  "is saved in the run folder (advise/), the keys it chose in recipe.yaml")
    advise_budget: float = setting(5.0, "with advise: minutes the probe may take once the model is loaded",
                                   allowed=POSITIVE_NUMBER)

    @property
    def allocation_mode(self) -> str:
        """The allocation in force: ``auto`` is sensitivity for DropBP techniques, uniform for the others."""
        if self.allocation != "auto":
            return self.allocation
        return "sensitivity" if uses_dropbp(self.technique) else "uniform"

    def check(self, p: Problems) -> None:
        """Record every problem of this section."""
        p.check(validate_drop_rate, self.drop_rate, "dropbp.drop_rate")
        check_declared(self, p, yaml_key("dropbp"))
        _int(p, "dropbp.pool_size", self.pool_size, 1, MAX_SIZE)
        p.check(check_number, "dropbp.allocate_at", self.allocate_at, low=0, high=1, high_open=True)
        _int(p, "dropbp.reallocate_every", self.reallocate_every, 1)
        if self.seed is not None:
            p.check(check_seed, self.seed, "dropbp.seed")
        p.check(check_choice, "dropbp.technique", self.technique, technique_names())
        self.schedule.check(p)
        engines = " or ".join(name for name in technique_names() if uses_dropbp(name))
        if self.advise and self.technique != "dropbp":
            p.add(f"dropbp.advise lets the probe choose the drop rate and allocation of technique dropbp, got "
                  f"technique {self.technique}; use technique dropbp or set advise false.")
        if self.technique in technique_names() and not uses_dropbp(self.technique):
            if self.train_output_projection:
                p.add(f"dropbp.train_output_projection needs dropbp.technique {engines} (it changes what a dropped "
                      f"branch trains), got technique {self.technique}; leave it false.")
            if not self.schedule.is_constant:
                p.add(f"dropbp.schedule applies to dropbp.technique {engines}, got technique {self.technique}; leave "
                      "the schedule constant (kind constant, warmup_steps 0).")
            if self.allocation not in ("auto", "uniform"):
                p.add(f"dropbp.allocation {self.allocation} needs dropbp.technique {engines} (sensitivities are "
                      f"DropBP's), got technique {self.technique}; use allocation uniform.")
