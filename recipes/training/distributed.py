"""Data-parallel ranks for ``dropbp train`` under ``torchrun`` or ``accelerate launch``: the process group, which
rank writes, and averages across ranks. One process (no ``WORLD_SIZE`` > 1) is a world of one."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dropbp.backends import Backend
from dropbp.core.errors import ConfigError


@dataclass
class World:
    """This process's place among the ranks."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's files."""
        return self.rank == 0

    def mean(self, value: float, device: torch.device) -> float:
        """The average of ``value`` over every rank."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def barrier(self) -> None:
        """Block until every rank gets here (nothing with one rank): e.g. no rank goes on before rank 0 has written a
        checkpoint."""
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this run started it."""
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()


def world_from_environment() -> World:
    """The ranks ``torchrun`` / ``accelerate launch`` describe in the environment (one rank otherwise)."""
    values = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        if not text.strip().isdigit():
            raise ConfigError(f"environment variable {name} must be a non-negative integer (torchrun and accelerate "
                              f"set it), got {text[:20]!r}; unset it for a single-process run.")
        values[name] = int(text)
    if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
        raise ConfigError(f"environment variables RANK {values['RANK']} and WORLD_SIZE {values['WORLD_SIZE']} do not "
                          "fit together (0 <= RANK < WORLD_SIZE).")
    return World(rank=values["RANK"], size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])


def join(world: World, backend_class: type[Backend]) -> World:
    """Join the process group through the device's distributed backend (gloo, nccl, hccl)."""
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend_class.distributed_backend)
        world.started_here = True
    return world
