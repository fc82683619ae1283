"""Time to accuracy in the paper's regime: a deep pre-trained decoder fine-tuned with LoRA (or QLoRA) on an
instruction task, DropBP beside LayerDrop, Progressive Layer Dropping and layer freezing, each at its best learning
rate, over seeds.

1. **Pre-training** (cached): a deep, narrow Llama learns Python text and two of the four string tasks (copy and
   capitals), until its loss is flat.
2. **Learning-rate sweep** (seed 0): every contender at each rate of ``lrs``; the rate with the lowest final
   validation loss is chosen per contender.
3. **Seeds:** each contender at its chosen rate over ``seeds`` (seed 0 is the sweep's run).

Every run trains the same number of examples (``epochs`` over the training set, cosine learning rate), so the
table gives both of the paper's comparisons: *equal epochs* (time saved, accuracy gap) and *time to the baseline's
final validation loss* (read off each run's curve). Each finished run is cached as JSON, so an interrupted benchmark
continues where it stopped.
"""
from __future__ import annotations

from typing import Any

from ..harness import run_benchmark
from .report import regime_figure, regime_markdown, summarise
from .run import TaskWorkload, run_regime, runs_key, task_data
from .settings import CONTENDER_KINDS, REGIME_MODEL, RegimeSettings, plan


def main(settings: RegimeSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench regime``: validate, run (resuming from cached runs), write
    ``regime-{regime}-{family}.*``."""
    return run_benchmark(f"regime-{settings.regime}-{settings.family}", settings, run_regime, regime_markdown, regime_figure,
                         progress=progress)


__all__ = ["CONTENDER_KINDS", "REGIME_MODEL", "RegimeSettings", "TaskWorkload", "main", "plan", "regime_figure",
           "regime_markdown", "run_regime", "runs_key", "summarise", "task_data"]
