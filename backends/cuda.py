"""CUDA backend (NVIDIA GPUs): autocast, peak-memory stats, synchronisation and seeding through torch.cuda."""
from __future__ import annotations

from typing import Any

import torch

from .base import Backend


class CUDABackend(Backend):
    """One NVIDIA GPU (the current CUDA device of this process)."""

    name = "cuda"
    distributed_backend = "nccl"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if torch.cuda.is_available():
            return None
        build = torch.version.cuda or "none (this is a CPU-only build)"
        return (
            f"--device cuda needs an NVIDIA GPU, but PyTorch sees none (torch {torch.__version__}, CUDA build "
            f"{build}). Install a CUDA build of torch (https://pytorch.org/get-started/locally/) on a machine with "
            "a GPU and a driver, or choose --device cpu or --device auto."
        )

    def bind_local_rank(self, local_rank: int) -> None:
        """One GPU per process: ``torch.cuda.set_device(local_rank)``."""
        torch.cuda.set_device(local_rank)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device))

    def memory_capacity_bytes(self) -> int | None:
        return int(torch.cuda.get_device_properties(self.device).total_memory)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def rng_state(self) -> dict[str, Any]:
        return {**super().rng_state(), "cuda": torch.cuda.get_rng_state_all()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        super().set_rng_state(state)
        torch.cuda.set_rng_state_all(state["cuda"])

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)
