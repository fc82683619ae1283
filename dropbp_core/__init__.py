"""dropbp core: device-agnostic DropBP (branch discovery, FLOPs model, allocation, samplers, the engine)."""
from __future__ import annotations

from . import dynamo_settings
from .assembly import AllocationSpec, TechniqueSpec, build_technique, engine_keywords
from .allocation import drop_fraction, greedy_paper_rates, uniform_rates, validate_drop_rate
from .branches import Branch, find_branches
from .engine import DropBP
from .errors import AllocationError, BackendUnavailableError, ConfigError, DropBPError, NoMatchingBranchError
from .freezing import blocks_for_backward_budget, freeze_bottom_layers
from .layerdrop import LayerDrop, pld_keep_probability
from .memory_model import MemoryModel
from .policy import StepPolicy
from .rate_allocation import RateAllocation
from .rate_schedule import RATE_SCHEDULES, RateSchedule
from .samplers import SAMPLERS, BernoulliSampler, PoolSampler, make_sampler
from .step_flops import StepFlops
from .techniques import Technique, apply_technique, register_technique, technique_names

__version__ = "0.1.0"

__all__ = ["DropBP", "dynamo_settings", "Branch", "find_branches", "drop_fraction", "greedy_paper_rates", "uniform_rates",
           "validate_drop_rate", "SAMPLERS", "BernoulliSampler", "PoolSampler", "make_sampler", "DropBPError",
           "ConfigError", "NoMatchingBranchError", "BackendUnavailableError", "AllocationError", "LayerDrop",
           "pld_keep_probability", "freeze_bottom_layers", "blocks_for_backward_budget", "Technique",
           "apply_technique", "register_technique", "technique_names", "MemoryModel", "RateSchedule", "RATE_SCHEDULES",
           "RateAllocation", "StepFlops", "StepPolicy", "AllocationSpec", "TechniqueSpec", "build_technique",
           "engine_keywords", "__version__"]
