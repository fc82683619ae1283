"""The benchmarks by name: each one's settings class, ``main`` function and one-line help. The command line and the
config-file loader both read this table."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import (compare, compiles, convergence, gradient_agreement, memory_search, recipe_time, regime, selfcheck,
               throughput)
from .advise import validation as advise_validation
from .regime import verdict

#: name -> (settings class, main function, one-line help)
BENCHMARKS: dict[str, tuple[type, Callable[..., dict[str, Any]], str]] = {
    "throughput": (throughput.ThroughputSettings, throughput.main,
                   "step time, tokens/s, efficiency vs the linear limit"),
    "memory": (memory_search.MemorySettings, memory_search.main,
               "longest sequence that fits a memory budget, per drop rate"),
    "convergence": (convergence.ConvergenceSettings, convergence.main,
                    "validation loss vs FLOPs and wall time on real text"),
    "regime": (regime.RegimeSettings, regime.main,
               "time to accuracy fine-tuning a deep model: DropBP vs LayerDrop, PLD, freezing"),
    "recipe-time": (recipe_time.RecipeTimeSettings, recipe_time.main,
                    "a recipe's DropBP setting against DropBP off at the baseline's time, over seeds"),
    "regime-verdict": (verdict.VerdictSettings, verdict.main,
                       "one table over several regime studies: which contender holds, and how much sooner"),
    "gradient-agreement": (gradient_agreement.GradientAgreementSettings, gradient_agreement.main,
                           "DropBP's gradient against the exact one, block by block, on a recipe's batch"),
    "compiles": (compiles.CompilesSettings, compiles.main,
                 "graphs torch.compile builds over training: pool vs bernoulli"),
    "selfcheck": (selfcheck.SelfcheckSettings, selfcheck.main,
                  "the engine, the paper's throughput shape and graph counts on one device, in one command"),
    "advise-validation": (advise_validation.AdviseValidationSettings, advise_validation.main,
                          "dropbp advise's probe on every regime with an equal-time verdict, against the verdict"),
    "compare": (compare.CompareSettings, compare.main,
                "throughput results of several devices side by side (folders from bench throughput)"),
}


def register_benchmark(name: str, settings_class: type, main: Callable[..., dict[str, Any]], help_text: str) -> None:
    """Make ``name`` a benchmark of ``dropbp bench`` (its options from ``settings_class``'s fields) and of
    ``dropbp bench --config``; a name already taken is refused."""
    if name in BENCHMARKS:
        raise ValueError(f"benchmark {name!r} is already registered.")
    BENCHMARKS[name] = (settings_class, main, help_text)
