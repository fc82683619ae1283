"""The HPU adapter's step protocol and error paths, against a RECORDING STAND-IN of the Gaudi SDK
(tests/standins/habana.py). No Gaudi hardware or SDK was available: this verifies what dropbp calls, in which
order and with which names, not what the SDK does with it."""
from __future__ import annotations

import os

import pytest
import torch

from dropbp.backends.hpu import LAZY_ENV, HPUBackend
from dropbp.core import DropBP
from dropbp.core.errors import BackendUnavailableError, ConfigError

from ..conftest import tiny_model, token_batch


def training_step(model, batch, optimizer, policy, backend, step, mask=None):
    """One step driven through the backend's interface, as every driver does: the mask, the forward, the backend's
    backward (with its boundary) and its optimizer step (with its boundary)."""
    if policy is not None:
        policy.begin_step(step, mask=mask)
    loss = model(input_ids=batch, labels=batch).loss
    backend.backward(loss, policy)
    backend.optimizer_step(optimizer)
    return float(loss.detach())


def log():
    from habana_frameworks import _standin_log

    return _standin_log


def test_lazy_mode_env_is_set_before_the_sdk_is_imported(habana_standin):
    backend = HPUBackend(lazy_mode=True)
    assert log().ENV_AT_IMPORT == ["1"] and backend.lazy_mode and os.environ[LAZY_ENV] == "1"


def test_eager_mode_env_and_conflict_after_import(habana_standin):
    backend = HPUBackend(lazy_mode=False)
    assert log().ENV_AT_IMPORT == ["0"] and not backend.lazy_mode
    with pytest.raises(BackendUnavailableError, match="PT_HPU_LAZY_MODE=1 before starting Python"):
        HPUBackend(lazy_mode=True)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("mask", ["none", "all"])
def test_mark_step_after_backward_and_after_optimizer_step(habana_standin, method, mask):
    backend = HPUBackend(lazy_mode=True)
    events = log().EVENTS
    model = tiny_model("llama", method)
    dropbp = DropBP(model, 0.5, sampler="pool")
    trainable = [p for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.register_hook(lambda grad: events.append("backward") or grad)
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    optimizer.register_step_post_hook(lambda *args: events.append("optimizer.step"))
    events.clear()
    training_step(model, token_batch(), optimizer, dropbp, backend, step=0, mask=mask)
    order = [e for e in events if e in ("backward", "mark_step", "optimizer.step")]
    if mask == "all" and method == "lora":  # nothing needs a gradient: backward skipped, graph still cut
        assert order == ["mark_step", "optimizer.step", "mark_step"]
    else:
        first_mark = order.index("mark_step")
        assert set(order[:first_mark]) == {"backward"}
        assert order[first_mark:] == ["mark_step", "optimizer.step", "mark_step"]


def test_no_mark_step_in_eager_mode_and_compile_uses_hpu_backend(habana_standin, monkeypatch):
    backend = HPUBackend(lazy_mode=False)
    model = tiny_model("llama")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    log().EVENTS.clear()
    training_step(model, token_batch(), optimizer, None, backend, step=0)
    assert "mark_step" not in log().EVENTS
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda m, backend=None, **kw: seen.setdefault("backend", backend) and m)
    backend.compile(model)
    assert seen["backend"] == "hpu_backend"
    assert isinstance(backend.compile_count(), int)  # dynamo's counter in compile mode


def test_lazy_compile_count_reads_graph_compilation_metric(habana_standin):
    backend = HPUBackend(lazy_mode=True)
    model = tiny_model("llama")
    assert backend.compile(model) is model  # lazy mode compiles graphs itself
    assert isinstance(backend.compile_count(), int)
    assert log().METRICS_ASKED == ["graph_compilation"]


def _graphs_per_step(backend, sampler, steps, pool_size=3):
    model = tiny_model("llama", "lora", layers=4)
    dropbp = DropBP(model, 0.5, sampler=sampler, pool_size=pool_size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    backend.mark_step()
    start = backend.compile_count()
    counts, masks = [], set()
    for step in range(steps):
        training_step(model, token_batch(), optimizer, dropbp, backend, step)
        masks.add(dropbp.mask)
        counts.append(backend.compile_count() - start)
    return counts, masks


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_lazy_graph_count_follows_from_the_masks_replayed(habana_standin):
    """Each new mask is a new forward+backward graph (and at most one new optimizer graph); with the pool sampler
    every mask has been seen after K steps, so the count stops growing there."""
    backend = HPUBackend(lazy_mode=True)
    k = 3
    pool_counts, pool_masks = _graphs_per_step(backend, "pool", 4 * k, pool_size=k)
    assert len(pool_masks) == k
    assert pool_counts[k - 1] == pool_counts[-1]  # nothing compiles after the first K steps
    assert k <= pool_counts[-1] <= 2 * k + 1  # one graph per mask, one optimizer graph per mask at most, .item()
    bernoulli_counts, bernoulli_masks = _graphs_per_step(backend, "bernoulli", 4 * k)
    assert len(bernoulli_masks) > k
    assert len(bernoulli_masks) <= bernoulli_counts[-1] <= 2 * len(bernoulli_masks) + 1
    assert bernoulli_counts[-1] > pool_counts[-1]


def test_memory_stats_seed_and_sampler_default(habana_standin):
    backend = HPUBackend(lazy_mode=True)
    backend.reset_peak_memory()
    assert backend.peak_memory_bytes() == 123456
    assert backend.memory_capacity_bytes() == 96 * 2**30
    backend.seed(5)
    assert ("hpu.manual_seed", 5) in log().EVENTS
    assert HPUBackend.default_sampler == "pool" and HPUBackend.compiles_per_mask


def test_hpu_graphs_refused_while_dropbp_is_attached(habana_standin):
    backend = HPUBackend(lazy_mode=True)
    model = tiny_model("llama")
    dropbp = DropBP(model, 0.5)
    with pytest.raises(ConfigError, match="silently wrong gradients"):
        backend.wrap_hpu_graphs(model, dropbp)
    dropbp.remove()
    assert backend.wrap_hpu_graphs(model, dropbp, max_graphs=4) is model
    assert log().CACHER[-1][1:] == (4, True)


def test_without_sdk_the_error_names_the_package_and_how_to_get_it():
    with pytest.raises(BackendUnavailableError, match=r"'habana_frameworks' \(habana-frameworks\).*not on PyPI"):
        HPUBackend()


def _loop(backend, steps, *, own_backward=False, own_optimizer=False, micro_batches=1):
    """The documented loop, or one that calls loss.backward() / optimizer.step() itself."""
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        dropbp.begin_step(step)
        for _ in range(micro_batches):
            loss = model(input_ids=token_batch(), labels=token_batch()).loss
            if own_backward:
                loss.backward()
            else:
                backend.backward(loss, dropbp)
        if own_optimizer:
            optimizer.step()
            optimizer.zero_grad()
        else:
            backend.optimizer_step(optimizer)


def test_documented_loop_and_gradient_accumulation_cut_every_step_quietly(habana_standin, recwarn):
    backend = HPUBackend(lazy_mode=True)
    log().EVENTS.clear()
    _loop(backend, 3, micro_batches=2)
    assert log().EVENTS.count("mark_step") == 3 * (2 + 1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_lost_mark_step_after_backward_is_reported(habana_standin):
    backend = HPUBackend(lazy_mode=True)
    with pytest.warns(RuntimeWarning, match=r"loss.backward\(\) was called directly"):
        _loop(backend, 2, own_backward=True)


def test_a_lost_mark_step_after_the_optimizer_step_is_reported(habana_standin):
    backend = HPUBackend(lazy_mode=True)
    with pytest.warns(RuntimeWarning, match=r"optimizer.step\(\) was called directly"):
        _loop(backend, 2, own_optimizer=True)


def test_eager_mode_needs_no_boundaries_and_warns_nothing(habana_standin, recwarn):
    backend = HPUBackend(lazy_mode=False)
    _loop(backend, 2, own_backward=True)
    _loop(backend, 2, own_optimizer=True)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
