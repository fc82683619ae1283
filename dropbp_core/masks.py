"""A drop mask as users may give it (bools or 0/1 per branch, a tensor, branch names, 'all' or 'none'), parsed into
one bool per branch (True = dropped)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .errors import ConfigError

MaskSpec = Sequence[bool] | Sequence[int] | torch.Tensor | Iterable[str] | str


def parse_mask(mask: MaskSpec, names: Sequence[str]) -> list[bool]:
    """One bool per branch of ``names`` (in order) from any :data:`MaskSpec`; a clear error for anything else."""
    n = len(names)
    if isinstance(mask, str):
        if mask in ("all", "none"):
            return [mask == "all"] * n
        mask = [mask]
    if isinstance(mask, torch.Tensor):
        mask = mask.tolist()
    items = list(mask)
    if items and all(isinstance(m, str) for m in items):
        unknown = sorted(set(items) - set(names))
        if unknown:
            raise ConfigError(f"mask names unknown branches {unknown}; known: {sorted(names)}.")
        chosen = set(items)
        return [name in chosen for name in names]
    if len(items) != n or not all(isinstance(m, (bool, int)) and m in (0, 1) for m in items):
        raise ConfigError(
            f"mask must be {n} booleans (one per branch, True = dropped), a list of branch names, 'all' or "
            f"'none'; got {mask!r}."
        )
    return [bool(m) for m in items]
