"""Intel Gaudi (HPU) backend. The SDK (habana-frameworks) is imported lazily and only here."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import torch

from dropbp_core.errors import BackendUnavailableError

from .base import Backend

SDK_MISSING = (
    "--device hpu needs Intel's Gaudi software stack, and the Python package 'habana_frameworks' (habana-frameworks) "
    "is not installed. It is not on PyPI: it ships with the Intel Gaudi software (install it on a Gaudi machine "
    "following https://docs.habana.ai/en/latest/Installation_Guide/ or use Intel's Gaudi PyTorch container), then "
    "'pip install dropbp[hpu]' for optimum-habana. Choose --device cpu, --device cuda or --device auto otherwise."
)
LAZY_ENV = "PT_HPU_LAZY_MODE"


class HPUBackend(Backend):
    """One Gaudi card, in lazy mode (``PT_HPU_LAZY_MODE`` != "0": graphs cut by ``mark_step``) or eager/compile mode.

    In lazy mode every distinct drop mask is a distinct compiled graph, so the default sampler is ``pool``.
    """

    name = "hpu"
    compiles_per_mask = True
    default_sampler = "pool"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("habana_frameworks") is None:
            return SDK_MISSING
        return None

    def __init__(self, lazy_mode: bool | None = None) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(reason)
        self.lazy_mode = self._configure_lazy_mode(lazy_mode)
        self.core: ModuleType = importlib.import_module("habana_frameworks.torch.core")
        if not torch.hpu.is_available():  # registered by the import above
            raise BackendUnavailableError(
                "habana_frameworks is installed but no Gaudi card is visible (torch.hpu.is_available() is False); "
                "check the driver with 'hl-smi', or choose another --device."
            )

    @staticmethod
    def _configure_lazy_mode(lazy_mode: bool | None) -> bool:
        """Set ``PT_HPU_LAZY_MODE`` before the SDK is imported (it is read once, at import time)."""
        if lazy_mode is None:
            return os.environ.get(LAZY_ENV, "1") != "0"
        wanted = "1" if lazy_mode else "0"
        current = os.environ.get(LAZY_ENV)
        if "habana_frameworks.torch.core" in sys.modules and current is not None and current != wanted:
            raise BackendUnavailableError(
                f"the Gaudi SDK was already imported with {LAZY_ENV}={current}; it reads the mode once, so "
                f"lazy_mode={lazy_mode} cannot take effect. Set {LAZY_ENV}={wanted} before starting Python."
            )
        os.environ[LAZY_ENV] = wanted
        return lazy_mode

    @property
    def device(self) -> torch.device:
        return torch.device("hpu")

    def device_name(self) -> str:
        return str(torch.hpu.get_device_name())

    def mark_step(self) -> None:
        """Cut and launch the accumulated lazy graph (a no-op outside lazy mode)."""
        if self.lazy_mode:
            self.core.mark_step()

    def after_backward(self) -> None:
        self.mark_step()

    def after_optimizer_step(self) -> None:
        self.mark_step()

    def synchronize(self) -> None:
        torch.hpu.synchronize()

    def reset_peak_memory(self) -> None:
        torch.hpu.reset_peak_memory_stats()

    def peak_memory_bytes(self) -> int | None:
        return int(torch.hpu.max_memory_allocated())

    def memory_capacity_bytes(self) -> int | None:
        stats: dict[str, Any] = torch.hpu.memory_stats()
        return int(stats["Limit"]) if "Limit" in stats else None

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.hpu.manual_seed(seed)

    def compile_count(self) -> int | None:
        if not self.lazy_mode:
            return super().compile_count()
        metrics = importlib.import_module("habana_frameworks.torch.hpu.metrics")
        metric = metrics.metric_global("graph_compilation")
        return None if metric is None else int(dict(metric.stats())["TotalNumber"])
