"""Allocation: the FLOPs budget holds, and the greedy allocator matches a hand-worked run of the paper's algorithm."""
from __future__ import annotations

import pytest

from dropbp.core import drop_fraction, greedy_paper_rates, uniform_rates
from dropbp.core.errors import AllocationError, ConfigError


def kept_flops(flops, rates):
    return sum(f * (1 - p) for f, p in zip(flops, rates))


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 0.875])
def test_uniform_and_greedy_hold_the_budget(p):
    flops = [8192, 12288, 8192, 12288, 9000, 12288]
    sensitivity = [5.0, 0.1, 2.0, 0.3, 1.0, 0.05]
    for rates in (uniform_rates(len(flops), p), greedy_paper_rates(flops, sensitivity, p)):
        assert kept_flops(flops, rates) <= (1 - p) * sum(flops) + 1e-6
        assert all(0 <= r <= 0.9 + 1e-12 for r in rates)
    greedy = greedy_paper_rates(flops, sensitivity, p)
    assert drop_fraction(flops, greedy) >= p - 1e-9
    if p > 0:  # the least sensitive branch is dropped at least as often as the most sensitive one
        assert greedy[5] >= greedy[0]


def test_greedy_matches_hand_worked_example():
    # flops [1, 1, 2], sensitivities [1, 2, 4], target 0.5 -> keep at most 2 of 4 FLOPs. Each round raises by 0.1
    # the branch whose new rate r has the least cost C_i * r (ties: the earlier branch), a branch stops at 0.9:
    #  costs [.1 .2 .4] -> b0=.1 | [.2 .2 .4] -> b0=.2 | [.3 .2 .4] -> b1=.1 | [.3 .4 .4] -> b0=.3
    #  [.4 .4 .4] -> b0=.4 | [.5 .4 .4] -> b1=.2 | [.5 .6 .4] -> b2=.1 | [.5 .6 .8] -> b0=.5 | [.6 .6 .8] -> b0=.6
    #  [.7 .6 .8] -> b1=.3 | [.7 .8 .8] -> b0=.7 | [.8 .8 .8] -> b0=.8 | [.9 .8 .8] -> b1=.4 | [.9 1.0 .8] -> b2=.2
    #  [.9 1.0 1.2] -> b0=.9 (cap) | [- 1.0 1.2] -> b1=.5 | [- 1.2 1.2] -> b1=.6 | [- 1.4 1.2] -> b2=.3
    #  kept = 0.1 + 0.4 + 2*0.7 = 1.9 <= 2: stop.
    assert greedy_paper_rates([1, 1, 2], [1, 2, 4], 0.5) == [0.9, 0.6, 0.3]


def test_greedy_min_rate_and_equal_sensitivity():
    assert greedy_paper_rates([1, 1], [1, 1], 0.5) == [0.5, 0.5]
    assert greedy_paper_rates([1, 1, 1, 1], [1, 1, 1, 1], 0.25, min_rate=0.2) == [0.3, 0.3, 0.2, 0.2]


def test_allocation_errors():
    with pytest.raises(AllocationError, match="infeasible with cap 0.9"):
        greedy_paper_rates([1, 1], [1, 1], 0.95)
    with pytest.raises(AllocationError, match="zero FLOPs"):
        greedy_paper_rates([0, 0], [1, 1], 0.5)
    for bad in (1.0, -0.1, 1.5, "0.5", True):
        with pytest.raises(ConfigError, match=r"drop_rate must be a number in \[0, 1\)"):
            uniform_rates(3, bad)
