"""With real torch.compile on the CPU, the pool sampler bounds the number of compiled graphs by its size K.

Each distinct mask is a distinct set of dynamo guards, as each distinct drop pattern is a distinct graph on
lazy-mode Gaudi; this stands in for the Gaudi graph cache, which cannot run here. The bernoulli count (which keeps
growing) is measured by `dropbp bench compiles`, not asserted here, because compiling ~80 graphs is slow."""
from __future__ import annotations

import pytest

from dropbp import backends
from dropbp.benchmarks.compiles import count_compiles

K = 4
TWO_LAYERS = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, vocab_size=256)  # 4 branches: 6 masks at p=0.5, more than K
FIXED = 2  # graphs that do not depend on the mask (e.g. a graph break's continuation)


@pytest.mark.slow
def test_pool_compiles_at_most_k_graphs_over_six_replays_of_the_pool():
    result = count_compiles(backends.get("cpu"), sampler="pool", drop_rate=0.5, steps=6 * K, pool_size=K,
                            model_overrides=TWO_LAYERS)
    assert result["distinct_masks"] <= K
    assert 1 <= result["graphs_compiled"] <= K + FIXED, result["graphs_compiled"]
    assert result["graphs_in_last_half"] == 0
    first_epoch = result["cumulative_graphs"][K - 1]
    assert result["cumulative_graphs"][-1] == first_epoch  # every graph was built while replaying the first K steps


@pytest.mark.slow
def test_pool_compiles_stay_bounded_under_a_decaying_schedule():
    """A cosine decay quantised to 2 rates after 2 warm-up steps: at most K masks per rate, plus the all-kept one
    (a Bernoulli sampler under the same decay would draw a new mask almost every step)."""
    from dropbp.core.rate_schedule import RateSchedule

    k, steps = 2, 24
    schedule = RateSchedule("cosine", total_steps=steps, end=0.25, warmup_steps=2, levels=2)
    bound = k * schedule.distinct_rates(0.75)  # K per rate, the warm-up's rate 0 included: 2 * (2 + 1)
    result = count_compiles(backends.get("cpu"), sampler="pool", drop_rate=0.75, steps=steps, pool_size=k,
                            schedule=schedule)
    assert bound == 6 and result["distinct_masks"] <= bound - (k - 1)  # rate 0 has one mask, not K
    assert 1 <= result["graphs_compiled"] <= result["distinct_masks"] + FIXED, result["graphs_compiled"]


@pytest.mark.slow
def test_throughput_bench_compiles_every_pool_entry_during_warmup():
    from dropbp.benchmarks.throughput import ThroughputSettings, run_throughput

    settings = ThroughputSettings(method="lora", drop_rates=(0.5,), seq_len=32, batch_size=1, warmup=0, steps=3,
                                  sampler="pool", pool_size=2, compile=True, compile_backend="aot_eager",
                                  memory_masks=1, model_overrides=dict(hidden_size=32, intermediate_size=64,
                                                                       num_attention_heads=4, num_key_value_heads=2,
                                                                       num_hidden_layers=2))
    result = run_throughput(settings, backends.get("cpu"), progress=False)
    assert result["warmup_rounds"] == 2  # at least K rounds: every pool entry replayed before measuring
    entries = [result["baseline"], *result["runs"], result["all_dropped"]]
    assert all(e["graph_compiles"] == 0 for e in entries)  # nothing compiles in the measured window
    # unwrapped/p=0 share one graph (hooks that drop nothing trace away), p=0.5 has K=2, all-dropped one
    assert sum(e["graph_compiles_warmup"] for e in entries) == 4


@pytest.mark.slow
def test_hooks_attached_after_a_compiled_call_take_effect():
    import torch

    from dropbp.core import DropBP

    from ..conftest import loss_and_grads, tiny_model, token_batch

    model = tiny_model("llama", "full")
    compiled = backends.get("cpu").compile(model, backend="aot_eager")
    loss_and_grads(compiled, token_batch())  # compiled and cached without hooks
    dropbp = DropBP(model, 0.5)
    dropbp.begin_step(0, mask=["model.layers.0.mlp"])
    _, grads = loss_and_grads(compiled, token_batch())
    assert grads["_orig_mod.model.layers.0.mlp.down_proj.weight"] is None
    assert isinstance(grads["_orig_mod.model.layers.1.mlp.down_proj.weight"], torch.Tensor)
