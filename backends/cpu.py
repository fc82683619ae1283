"""CPU backend: runs everywhere; no device peak-memory counter (saved-activation bytes are measured instead)."""
from __future__ import annotations

import os
import platform

import torch

from .base import Backend


class CPUBackend(Backend):
    """The host CPU. Eager execution, so step boundaries and synchronisation are no-ops."""

    name = "cpu"
    accelerator = False
    default_precision = "fp32"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def memory_capacity_bytes(self) -> int | None:
        """Physical RAM of the host (what a model on the CPU must fit in)."""
        try:
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None

    def device_name(self) -> str:
        return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
