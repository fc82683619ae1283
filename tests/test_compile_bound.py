"""With real torch.compile on the CPU, the pool sampler bounds the number of compiled graphs by its size K.

Each distinct mask is a distinct set of dynamo guards, as each distinct drop pattern is a distinct graph on
lazy-mode Gaudi; this stands in for the Gaudi graph cache, which cannot run here. The bernoulli count (which keeps
growing) is measured by `dropbp bench compiles`, not asserted here, because compiling ~80 graphs is slow."""
from __future__ import annotations

import backends
from dropbp_core.bench.compiles import count_compiles

K = 8
FIXED = 2  # graphs that do not depend on the mask (e.g. a graph break's continuation)


def test_pool_compiles_at_most_k_graphs_over_200_steps():
    result = count_compiles(backends.get("cpu"), sampler="pool", drop_rate=0.75, steps=200, pool_size=K)
    assert result["distinct_masks"] <= K
    assert 1 <= result["graphs_compiled"] <= K + FIXED, result["graphs_compiled"]
    assert result["graphs_in_last_half"] == 0
    first_epoch = result["cumulative_graphs"][K - 1]
    assert result["cumulative_graphs"][-1] == first_epoch  # every graph was built while replaying the first K steps
