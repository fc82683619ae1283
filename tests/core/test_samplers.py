"""Samplers: realised rates, the pool's exactness and bound, and determinism without global RNG side effects."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from dropbp.core import BernoulliSampler, PoolSampler, make_sampler
from dropbp.core.errors import ConfigError

RATES = [0.0, 0.1, 0.3, 0.5, 0.75, 0.875, 0.9, 0.6]
FLOPS = [10, 30, 10, 30, 10, 30, 10, 30]


def test_bernoulli_rates_within_three_standard_errors():
    sampler = BernoulliSampler(RATES, seed=7)
    steps = 2000
    counts = torch.stack([sampler.mask(s) for s in range(steps)]).double().mean(0)
    for asked, realised in zip(RATES, counts.tolist()):
        se = math.sqrt(asked * (1 - asked) / steps)
        assert abs(realised - asked) <= 3 * se + 1e-12, (asked, realised, se)


@pytest.mark.parametrize("size", [8, 16])
def test_pool_exact_over_every_window_and_bounded(size):
    rates = [0.875, 0.5, 0.25, 0.125, 0.75, 0.0, 0.625, 0.375]
    sampler = PoolSampler(rates, FLOPS, seed=3, size=size)
    masks = torch.stack([sampler.mask(s) for s in range(1000)])
    for start in range(0, 1000 - size + 1, size):
        window = masks[start:start + size].sum(0).tolist()
        assert window == [round(r * size) for r in rates], start
    distinct = {tuple(m.tolist()) for m in masks}
    assert len(distinct) <= size


def test_pool_spreads_flops_evenly_and_reports_rounded_rates():
    sampler = PoolSampler(RATES, FLOPS, seed=0, size=8)
    per_entry = (sampler.pool.double() * torch.tensor(FLOPS, dtype=torch.float64)).sum(1)
    assert per_entry.max() - per_entry.min() <= max(FLOPS)
    assert sampler.expected_rates() == [round(r * 8) / 8 for r in RATES]  # 0.1 -> 1/8, 0.3 -> 2/8, ...


@pytest.mark.parametrize("name", ["bernoulli", "pool"])
def test_same_seed_and_step_same_mask_and_no_global_rng_change(name):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    first = make_sampler(name, RATES, FLOPS, seed=11)
    masks = [first.mask(s).tolist() for s in range(50)]
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    assert torch.equal(states[0], after[0]) and states[1] == after[1]
    assert all(np.array_equal(a, b) for a, b in zip(states[2], after[2]))
    torch.manual_seed(999)  # a different global state must not change the masks
    second = make_sampler(name, RATES, FLOPS, seed=11)
    assert [second.mask(s).tolist() for s in reversed(range(50))] == masks[::-1]
    other_seed = make_sampler(name, RATES, FLOPS, seed=12)
    assert [other_seed.mask(s).tolist() for s in range(50)] != masks


def test_unknown_sampler_and_bad_pool_size():
    with pytest.raises(ConfigError, match="sampler must be one of 'bernoulli', 'pool'"):
        make_sampler("uniform", RATES, FLOPS, seed=0)
    with pytest.raises(ConfigError, match="pool_size"):
        make_sampler("pool", RATES, FLOPS, seed=0, pool_size=0)
