"""The one seeded generator behind every data order (recipe windows per epoch, benchmark batches per step).

It is ``torch.Generator().manual_seed(seed * 1_000_003 + index)``: a pure function of (seed, index), so every rank
and a resumed run see the same order. The masks use the core's hashed ``step_generator`` instead; the data order
keeps this older form because every committed result and the golden loss curve were made with it, and changing it
changes every run's data order.
"""
from __future__ import annotations

import torch


def order_generator(seed: int, index: int) -> torch.Generator:
    """A private CPU generator for position ``index`` (an epoch or a step) of the data order of ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)
