"""dropbp recipes: the application layer (recipes and cluster profiles, models, data, the training loop, checkpoints,
porting, reports, the ``dropbp`` CLI).

This module is the public API for your own code: run a recipe (``FineTune``, ``load_recipe``), use DropBP in a
Hugging Face ``Trainer`` (``DropBPCallback``) or in your own loop (``StepRunner``), port a recipe. The training
pieces (checkpoints, schedules, evaluation) are in :mod:`dropbp.recipes.training`; the benchmarks use
:mod:`dropbp.recipes.for_benchmarks`. The subpackages may move. Names load on first use, so that the ``dropbp``
console script installs its Ctrl-C handling before torch and transformers load; type checkers read the imports
below.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dropbp.recipes.lazy import lazy_exports

if TYPE_CHECKING:
    from dropbp.recipes.config.clusters import ClusterProfile, cluster_names, load_cluster
    from dropbp.recipes.config.registry import find_recipe, shipped
    from dropbp.recipes.config.schema import Recipe, load_recipe
    from dropbp.recipes.data.instruct import load_data
    from dropbp.recipes.data.tokenizers import load_tokenizer
    from dropbp.recipes.finetune import FineTune
    from dropbp.recipes.model.build import apply_method, build_model, build_recipe_model
    from dropbp.recipes.port import port_recipe
    from dropbp.recipes.report.plots import plot_training_curve
    from dropbp.recipes.report.savings import training_flops
    from dropbp.recipes.training.hf_trainer import DropBPCallback
    from dropbp.recipes.training.step import StepResult, StepRunner

#: Public name -> the module it is defined in (the same as the imports above; a test keeps them equal).
EXPORTS: dict[str, str] = {
    "FineTune": "dropbp.recipes.finetune",
    "Recipe": "dropbp.recipes.config.schema", "load_recipe": "dropbp.recipes.config.schema",
    "find_recipe": "dropbp.recipes.config.registry", "shipped": "dropbp.recipes.config.registry",
    "ClusterProfile": "dropbp.recipes.config.clusters", "cluster_names": "dropbp.recipes.config.clusters",
    "load_cluster": "dropbp.recipes.config.clusters",
    "port_recipe": "dropbp.recipes.port",
    "DropBPCallback": "dropbp.recipes.training.hf_trainer",
    "StepRunner": "dropbp.recipes.training.step", "StepResult": "dropbp.recipes.training.step",
    "build_model": "dropbp.recipes.model.build", "apply_method": "dropbp.recipes.model.build",
    "build_recipe_model": "dropbp.recipes.model.build",
    "load_data": "dropbp.recipes.data.instruct", "load_tokenizer": "dropbp.recipes.data.tokenizers",
    "plot_training_curve": "dropbp.recipes.report.plots", "training_flops": "dropbp.recipes.report.savings",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
