"""Property-based test of the Python API: random settings, masks, steps and call orders. Every call either raises an
error of the DropBPError family (and then changes nothing) or behaves correctly; grad mode is never left changed,
and no hook is left on a model after a refused call."""
from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropbp.core import DropBP
from dropbp.core.errors import DropBPError

from ..conftest import tiny_model, token_batch
from .test_branches import hook_count

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.text(max_size=3),
                    st.none())
RATES = st.one_of(st.floats(0, 0.99), NUMBERS)
MASKS = st.one_of(
    st.none(), st.sampled_from(["all", "none", "nope"]),
    st.lists(st.booleans(), min_size=0, max_size=6),
    st.lists(st.sampled_from(["model.layers.0.mlp", "model.layers.1.self_attn", "model.layers.9.mlp"]), max_size=3),
    st.lists(st.integers(-1, 2), max_size=5),
)
STEPS = st.one_of(st.none(), st.integers(-2, 2**70), st.floats(allow_nan=True), st.booleans())
OPS = st.lists(st.one_of(
    st.tuples(st.just("begin"), STEPS, MASKS),
    st.tuples(st.just("forward"), st.booleans()),
    st.tuples(st.just("remove")), st.tuples(st.just("attach")), st.tuples(st.just("second engine")),
    st.tuples(st.just("set_rates"), st.one_of(st.lists(RATES, max_size=5), NUMBERS)),
), max_size=8)


def _first_param(module: torch.nn.Module) -> torch.nn.Parameter:
    return next(module.parameters())


def _check_forward(model: torch.nn.Module, dropbp: DropBP, train: bool) -> None:
    """Forward + backward; dropped branches (attached, training) get no gradient, every other weight gets one."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=token_batch(seq=8), labels=token_batch(seq=8)).loss
    if loss.requires_grad:
        loss.backward()
    in_effect = dropbp.attached and train
    for dropped, module in zip(dropbp.mask, dropbp._modules):
        grad = _first_param(module).grad
        assert (grad is None) == (dropped and in_effect), (dropbp.mask, in_effect)
    assert model.model.embed_tokens.weight.grad is not None
    model.train()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(drop_rate=RATES, sampler=st.sampled_from(["bernoulli", "pool", "random", ""]),
       pool_size=st.one_of(st.integers(-2, 9), NUMBERS), seed=st.one_of(st.integers(-2**65, 2**65), NUMBERS),
       rates=st.one_of(st.none(), st.lists(RATES, max_size=5)), ops=OPS)
def test_every_call_is_refused_cleanly_or_correct(drop_rate, sampler, pool_size, seed, rates, ops):
    model = tiny_model("llama", "full", width=16)
    assert torch.is_grad_enabled()
    try:
        dropbp = DropBP(model, drop_rate, sampler=sampler, pool_size=pool_size, seed=seed, rates=rates)
    except DropBPError:
        assert hook_count(model) == 0 and torch.is_grad_enabled()
        return
    for op in ops:
        hooks = hook_count(model)
        try:
            if op[0] == "begin":
                mask = dropbp.begin_step(op[1], mask=op[2])
                assert isinstance(op[1], int) and not isinstance(op[1], bool) or op[1] is None
                assert len(mask) == 4 and mask == dropbp.mask
            elif op[0] == "forward":
                _check_forward(model, dropbp, op[1])
            elif op[0] == "remove":
                dropbp.remove()
                assert hook_count(model) == 0
            elif op[0] == "attach":
                dropbp.attach()
                assert dropbp.attached and dropbp.mask == (False,) * 4
            elif op[0] == "second engine":
                DropBP(model, 0.5)
                assert not dropbp.attached  # only possible when the first engine is off
                dropbp = DropBP.of(model)
            elif op[0] == "set_rates":
                dropbp.set_rates(op[1])
                assert all(0 <= r < 1 and not math.isnan(r) for r in dropbp.rates)
        except DropBPError:
            assert hook_count(model) == hooks  # a refused call leaves the hooks as they were
        assert torch.is_grad_enabled()
    report = dropbp.report()
    assert 0.0 <= report["realized_drop_fraction"] <= 1.0 and report["steps"] >= 0
