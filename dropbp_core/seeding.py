"""Seeded work that leaves the caller's random generators as it found them."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def reseed(seed: int, device: torch.device | str = "cpu") -> None:
    """Seed the CPU generator and, for an accelerator ``device``, that device's generator."""
    device = torch.device(device)
    torch.random.default_generator.manual_seed(seed)
    if device.type != "cpu":
        getattr(torch, device.type).manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block the generators :func:`reseed` touches start from ``seed``; afterwards every generator is
    back to its previous state. Used for model and adapter initialisation and for sensitivity passes."""
    device = torch.device(device)
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device.index or 0] if accelerator else [],
                               device_type=device.type if accelerator else "cuda"):
        reseed(seed, device)
        yield
