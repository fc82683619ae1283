"""Training pieces every driver uses: the step runner, the learning-rate schedule, evaluation, checkpoints,
distributed set-up and the Hugging Face Trainer callback. Import them from here (loaded on first use)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dropbp.recipes.lazy import lazy_exports

_STEP, _OPTIM, _EVAL = "dropbp.recipes.training.step", "dropbp.recipes.training.optim", "dropbp.recipes.training.evaluation"
_CHECKPOINT = "dropbp.recipes.training.checkpoint"
_DISTRIBUTED = "dropbp.recipes.training.distributed"
_HEAD = "dropbp.recipes.training.labelled_head"
EXPORTS: dict[str, str] = {
    "StepRunner": _STEP, "StepResult": _STEP, "causal_lm_loss": _STEP,
    "build_optimizer": _OPTIM, "lr_factor": _OPTIM, "lr_scheduler": _OPTIM, "LR_SCHEDULES": "dropbp.recipes.config.schema",
    "validation_loss": _EVAL, "greedy_exact_match": _EVAL, "teacher_forced_exact_match": _EVAL,
    "save_checkpoint": _CHECKPOINT, "load_checkpoint": _CHECKPOINT, "latest_checkpoint": _CHECKPOINT,
    "checkpoints": _CHECKPOINT, "POLICY_KEY": _CHECKPOINT, "ALLOCATION_KEY": _CHECKPOINT,
    "World": _DISTRIBUTED, "world_from_environment": _DISTRIBUTED,
    "DropBPCallback": "dropbp.recipes.training.hf_trainer",
    "rate_schedule": "dropbp.recipes.training.rates",
    "labelled_positions_loss": _HEAD, "head_is_exact": _HEAD, "choose_loss": _HEAD, "labelled_fraction": _HEAD,
    "head_fraction": _HEAD,
    "HEAD_POSITIONS": "dropbp.recipes.config.schema",
}
if TYPE_CHECKING:  # the same names, for type checkers and editors (at run time they load on first use)
    from dropbp.recipes.config.schema import HEAD_POSITIONS, LR_SCHEDULES
    from dropbp.recipes.training.checkpoint import (ALLOCATION_KEY, POLICY_KEY, checkpoints, latest_checkpoint,
                                                    load_checkpoint, save_checkpoint)
    from dropbp.recipes.training.distributed import World, world_from_environment
    from dropbp.recipes.training.evaluation import greedy_exact_match, teacher_forced_exact_match, validation_loss
    from dropbp.recipes.training.hf_trainer import DropBPCallback
    from dropbp.recipes.training.labelled_head import (choose_loss, head_fraction, head_is_exact, labelled_fraction,
                                                       labelled_positions_loss)
    from dropbp.recipes.training.optim import build_optimizer, lr_factor, lr_scheduler
    from dropbp.recipes.training.rates import rate_schedule
    from dropbp.recipes.training.step import StepResult, StepRunner, causal_lm_loss

__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
