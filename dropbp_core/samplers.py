"""Per-step drop decisions as pure functions of (seed, step): the paper's Bernoulli draws and a static mask pool.

No sampler touches a global random generator: each draw uses a private ``torch.Generator`` on the CPU seeded from a
hash of ``(seed, step)``, so every data-parallel rank, every device and a resumed run get the same mask.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import torch

from .checks import check_int
from .errors import ConfigError

SAMPLERS: tuple[str, ...] = ("bernoulli", "pool")


def step_seed(seed: int, step: int, salt: str) -> int:
    """A 63-bit seed derived from ``(salt, seed, step)`` by BLAKE2b: stable across processes and platforms."""
    digest = hashlib.blake2b(f"{salt}:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int, salt: str) -> torch.Generator:
    """A private CPU generator for ``(salt, seed, step)``: every per-step random draw of the project uses one."""
    return torch.Generator(device="cpu").manual_seed(step_seed(seed, step, salt))


def next_step(step: object, previous: int | None) -> int:
    """``step`` checked (a non-negative integer), or, for None, the step after ``previous`` (0 at first)."""
    if step is None:
        return 0 if previous is None else previous + 1
    return check_int("step", step, 0)


class Sampler(Protocol):
    """What the engine needs from a sampler: its name, the rates it targets, and the mask for a step."""

    name: str
    rates: list[float]

    def mask(self, step: int) -> torch.Tensor:
        """Boolean CPU tensor, one entry per branch, True where the branch is dropped at ``step``."""
        ...

    def expected_rates(self) -> list[float]:
        """The long-run per-branch rates this sampler realises (may differ from ``rates`` by rounding)."""
        ...


class BernoulliSampler:
    """Independent draws per branch and step, as in the paper: branch ``i`` is dropped with probability ``p_i``."""

    name = "bernoulli"

    def __init__(self, rates: Sequence[float], seed: int) -> None:
        self.rates = [float(r) for r in rates]
        self.seed = int(seed)
        self._rates = torch.tensor(self.rates, dtype=torch.float64)

    def mask(self, step: int) -> torch.Tensor:
        draws = torch.rand(len(self.rates), generator=step_generator(self.seed, step, "bernoulli"), dtype=torch.float64)
        return draws < self._rates

    def expected_rates(self) -> list[float]:
        return list(self.rates)


def build_pool(rates: Sequence[float], flops: Sequence[float], size: int, seed: int) -> torch.Tensor:
    """A ``(size, n)`` boolean pool in which branch ``i`` is dropped in ``round(p_i * size)`` entries.

    Branches are placed largest-FLOPs first, each into the entries that drop the fewest FLOPs so far (ties broken
    by a seeded shuffle), so every entry drops about the same FLOPs and the step time stays even.
    """
    pool = torch.zeros(size, len(rates), dtype=torch.bool)
    dropped = [0.0] * size
    tie_break = torch.randperm(size, generator=step_generator(seed, 0, "pool-build")).tolist()
    for i in sorted(range(len(rates)), key=lambda i: (-float(flops[i]), i)):
        count = int(round(float(rates[i]) * size))
        entries = sorted(range(size), key=lambda e: (dropped[e], tie_break[e]))[:count]
        for e in entries:
            pool[e, i] = True
            dropped[e] += float(flops[i])
        tie_break = tie_break[1:] + tie_break[:1]  # rotate so equal branches spread across entries
    return pool


class PoolSampler:
    """Replays a static pool of K masks: step ``s`` uses entry ``perm_e[s % K]`` where ``e = s // K`` and ``perm_e``
    is a seeded permutation. Per-branch rates are exact over every aligned window of K steps, and at most K distinct
    masks ever occur, which bounds graph compiles on lazy-mode Gaudi, ``torch.compile`` and CUDA graphs."""

    name = "pool"

    def __init__(self, rates: Sequence[float], flops: Sequence[float], seed: int, size: int = 8) -> None:
        check_int("pool_size", size, 1, meaning="the number of distinct masks")
        self.rates = [float(r) for r in rates]
        self.seed = int(seed)
        self.size = size
        self.pool = build_pool(self.rates, flops, size, self.seed)
        self._order = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> list[int]:
        return torch.randperm(self.size, generator=step_generator(self.seed, epoch, "pool-order")).tolist()

    def index(self, step: int) -> int:
        """The pool entry replayed at ``step``."""
        epoch, position = divmod(int(step), self.size)
        return self._order(epoch)[position]

    def mask(self, step: int) -> torch.Tensor:
        return self.pool[self.index(step)].clone()

    def expected_rates(self) -> list[float]:
        return self.pool.double().mean(dim=0).tolist()


def make_sampler(name: str, rates: Sequence[float], flops: Sequence[float], seed: int, pool_size: int = 8) -> Sampler:
    """Build the sampler called ``name`` ('bernoulli' or 'pool')."""
    if name == "bernoulli":
        return BernoulliSampler(rates, seed)
    if name == "pool":
        return PoolSampler(rates, flops, seed, pool_size)
    raise ConfigError(f"sampler must be one of {', '.join(repr(s) for s in SAMPLERS)}, got {name!r}.")
