"""Intel Gaudi (HPU) backend: lazy mode with ``mark_step`` step boundaries, or eager + ``torch.compile``.

The SDK (``habana_frameworks``) is imported lazily and only here. Nothing in this module has run on a Gaudi card:
the step protocol, the environment handling and the metrics calls are tested against a recording stand-in of the
SDK (tests/backends/test_hpu_backend.py); the API names are those of Intel's public Gaudi documentation and
examples (``habana_frameworks.torch.core.mark_step``, ``habana_frameworks.torch.hpu.metrics.metric_global``,
``habana_frameworks.torch.utils.internal.is_lazy``, ``habana_frameworks.torch.hpu.ModuleCacher``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

import torch

from dropbp.core.policy import StepPolicy
from dropbp.core.errors import BackendUnavailableError, ConfigError

from .base import Backend

SDK_MISSING = (
    "--device hpu needs Intel's Gaudi software stack, and the Python package 'habana_frameworks' (habana-frameworks) "
    "is not installed. It is not on PyPI: it ships with the Intel Gaudi software (install it on a Gaudi machine "
    "following https://docs.habana.ai/en/latest/Installation_Guide/ or use Intel's Gaudi PyTorch container), then "
    "'pip install dropbp[hpu]' for optimum-habana. Choose --device cpu, --device cuda or --device auto otherwise."
)
LAZY_ENV = "PT_HPU_LAZY_MODE"
CORE_MODULE = "habana_frameworks.torch.core"
METRICS_MODULE = "habana_frameworks.torch.hpu.metrics"
INTERNAL_MODULE = "habana_frameworks.torch.utils.internal"
RANDOM_MODULE = "habana_frameworks.torch.hpu.random"  # get_rng_state / set_rng_state of the Gaudi generator
DYNAMO_MODULE = "habana_frameworks.torch.dynamo"  # registers the "hpu_backend" dynamo backend
GRAPH_COMPILATION_METRIC = "graph_compilation"
HPU_GRAPHS_REFUSED = (
    "HPU Graphs (ModuleCacher / use_hpu_graphs_for_training) cannot be combined with DropBP: a captured graph is "
    "keyed on the forward arguments only, and the drop mask lives in module state, so a graph captured under one "
    "mask would be replayed under another and give silently wrong gradients. Turn HPU Graphs off; the 'pool' "
    "sampler already bounds the number of compiled graphs to the pool size."
)
MISSED_BACKWARD_BOUNDARY = (
    "lazy-mode Gaudi: optimizer_step() ran with no backward boundary since the previous optimizer step, so "
    "loss.backward() was called directly and no mark_step() cut the graph after it; backward and optimizer step "
    "are then compiled as one larger graph. Call device.backward(loss, dropbp) instead of loss.backward()."
)
MISSED_OPTIMIZER_BOUNDARY = (
    "lazy-mode Gaudi: a backward for a new DropBP step ran with no optimizer boundary since the previous backward, "
    "so optimizer.step() was called directly and no mark_step() cut the graph after it. Call "
    "device.optimizer_step(optimizer) instead of optimizer.step()."
)


class HPUBackend(Backend):
    """One Gaudi card, in lazy mode (``PT_HPU_LAZY_MODE`` != "0": graphs cut by ``mark_step``) or eager/compile mode.

    In lazy mode every distinct drop mask is a distinct compiled graph, so the default sampler is ``pool`` and the
    benchmarks run every pool entry during warm-up.
    """

    name = "hpu"
    compiles_per_mask = True
    default_sampler = "pool"
    compile_backend = "hpu_backend"
    distributed_backend = "hccl"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("habana_frameworks") is None:
            return SDK_MISSING
        return None

    def __init__(self, lazy_mode: bool | None = None) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(reason)
        configure_lazy_mode(lazy_mode)
        self.core: ModuleType = importlib.import_module(CORE_MODULE)  # registers torch.hpu
        self.lazy_mode = sdk_is_lazy()
        self._backwards_since_optimizer = 0
        self._optimizer_since_backward = True
        self._backward_step: int | None = None
        if not torch.hpu.is_available():
            raise BackendUnavailableError(
                "habana_frameworks is installed but no Gaudi card is visible (torch.hpu.is_available() is False); "
                "check the driver with 'hl-smi', or choose another --device."
            )

    @property
    def device(self) -> torch.device:
        return torch.device("hpu")

    def device_name(self) -> str:
        return str(torch.hpu.get_device_name())

    def mark_step(self) -> None:
        """Cut and launch the accumulated lazy graph (skipped outside lazy mode, where it is a no-op)."""
        if self.lazy_mode:
            self.core.mark_step()

    def after_backward(self) -> None:
        self._backwards_since_optimizer += 1
        self._optimizer_since_backward = False
        self.mark_step()

    def after_optimizer_step(self) -> None:
        if self.lazy_mode and self._backwards_since_optimizer == 0:
            warnings.warn(MISSED_BACKWARD_BOUNDARY, RuntimeWarning, stacklevel=3)
        self._backwards_since_optimizer = 0
        self._optimizer_since_backward = True
        self.mark_step()

    def backward(self, loss: torch.Tensor, dropbp: StepPolicy | None = None, **kwargs: Any) -> bool:
        """As :meth:`Backend.backward`; in lazy mode it also says so (a warning) when the previous DropBP step's
        optimizer step ran without :meth:`optimizer_step` (a lost ``mark_step``). Micro-batches of one step
        (gradient accumulation) share the DropBP step number and are not mistaken for it."""
        step = None if dropbp is None else dropbp.step
        if (self.lazy_mode and step is not None and self._backward_step is not None and step != self._backward_step
                and not self._optimizer_since_backward):
            warnings.warn(MISSED_OPTIMIZER_BOUNDARY, RuntimeWarning, stacklevel=2)
        self._backward_step = step
        return super().backward(loss, dropbp, **kwargs)

    def synchronize(self) -> None:
        torch.hpu.synchronize()

    def reset_peak_memory(self) -> None:
        torch.hpu.reset_peak_memory_stats()

    def peak_memory_bytes(self) -> int | None:
        return int(torch.hpu.max_memory_allocated())

    def memory_capacity_bytes(self) -> int | None:
        stats: dict[str, Any] = dict(torch.hpu.memory_stats())
        return int(stats["Limit"]) if "Limit" in stats else None

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.hpu.manual_seed(seed)

    def rng_state(self) -> dict[str, Any]:
        return {**super().rng_state(), "hpu": importlib.import_module(RANDOM_MODULE).get_rng_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        super().set_rng_state(state)
        importlib.import_module(RANDOM_MODULE).set_rng_state(state["hpu"])

    def compile(self, model: torch.nn.Module, *, backend: str | None = None,
                recompile_limit: int | None = None) -> torch.nn.Module:
        """Lazy mode compiles graphs itself (returns the model unchanged); compile mode uses ``hpu_backend``."""
        if self.lazy_mode:
            return model
        return super().compile(model, backend=backend, recompile_limit=recompile_limit)

    def compile_backends(self) -> list[str]:
        """Dynamo's backends after the SDK's dynamo module (which registers ``hpu_backend``) is imported."""
        try:
            importlib.import_module(DYNAMO_MODULE)
        except ImportError:
            pass
        return super().compile_backends()

    def compile_count(self) -> int | None:
        """Lazy mode: the SDK's ``graph_compilation`` metric; compile mode: dynamo's counter."""
        if not self.lazy_mode:
            return super().compile_count()
        metrics = importlib.import_module(METRICS_MODULE)
        metric = metrics.metric_global(GRAPH_COMPILATION_METRIC)
        return None if metric is None else int(dict(metric.stats())["TotalNumber"])

    def wrap_hpu_graphs(self, model: torch.nn.Module, dropbp: Any = None, max_graphs: int = 10) -> torch.nn.Module:
        """HPU Graphs for a model *without* DropBP; refused (clear error) while DropBP hooks are attached."""
        if dropbp is not None and dropbp.attached:
            raise ConfigError(HPU_GRAPHS_REFUSED)
        hpu = importlib.import_module("habana_frameworks.torch.hpu")
        return hpu.ModuleCacher(max_graphs=max_graphs)(model=model, inplace=True)


def sdk_is_lazy() -> bool:
    """The mode the imported SDK runs in: ``habana_frameworks.torch.utils.internal.is_lazy()``, or, on SDKs
    without it, the environment (unset meant lazy there)."""
    try:
        return bool(importlib.import_module(INTERNAL_MODULE).is_lazy())
    except (ImportError, AttributeError):
        return os.environ.get(LAZY_ENV, "1") != "0"


def configure_lazy_mode(lazy_mode: bool | None) -> None:
    """Set ``PT_HPU_LAZY_MODE`` before the SDK is imported (it reads it once, at import time).

    ``None`` keeps the environment's choice; newer SDKs default to eager mode when it is unset.
    """
    current = os.environ.get(LAZY_ENV)
    if lazy_mode is None:
        return
    wanted = "1" if lazy_mode else "0"
    if CORE_MODULE in sys.modules:
        if sdk_is_lazy() != lazy_mode:
            raise BackendUnavailableError(
                f"the Gaudi SDK was already imported in {'lazy' if not lazy_mode else 'eager'} mode "
                f"({LAZY_ENV}={current or 'unset'}); it reads the mode once, at import, so lazy_mode={lazy_mode} "
                f"cannot take effect. Set {LAZY_ENV}={wanted} before starting Python."
            )
        return
    os.environ[LAZY_ENV] = wanted
