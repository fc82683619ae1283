"""LISA: a random set of blocks trains per period, drawn from (seed, period); the rest of the blocks get no gradient,
what trains outside the blocks always does, and everything is trainable again after remove()."""
from __future__ import annotations

import pytest
import torch

from dropbp.core.errors import ConfigError
from dropbp.core.lisa import LISA
from dropbp.core.step_flops import StepFlops
from dropbp.core.techniques import apply_technique

from ..conftest import loss_and_grads, tiny_model, token_batch


def _block_of(name: str) -> int | None:
    marker = ".layers."
    return int(name.split(marker, 1)[1].split(".", 1)[0]) if marker in name else None


def test_the_blocks_are_a_function_of_seed_and_period():
    model = tiny_model("llama", layers=4)
    lisa, twin = LISA(model, 2, period=3, seed=5), LISA(tiny_model("llama", layers=4), 2, period=3, seed=5)
    draws = [lisa.active_at(step) for step in range(30)]
    assert draws == [twin.active_at(step) for step in range(30)]
    assert all(draws[step] == draws[step - step % 3] for step in range(30))  # the same within a period
    assert len({tuple(d) for d in draws}) > 1 and all(len(d) == 2 for d in draws)
    assert draws != [LISA(model, 2, period=3, seed=6).active_at(step) for step in range(30)]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_only_this_periods_blocks_train_and_remove_restores_the_rest(method):
    model = tiny_model("llama", method, layers=4)
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    lisa = LISA(model, 1, period=2, seed=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == before  # nothing frozen before a step
    mask = lisa.begin_step(2)
    active = [i for i, frozen in enumerate(mask) if not frozen]
    assert active == lisa.active_at(2) and len(active) == 1
    _, grads = loss_and_grads(model, token_batch())
    for name, grad in grads.items():
        block = _block_of(name)
        assert (grad is not None) == (block is None or block == active[0]), name
    if method == "full":  # the embeddings and the head train every step
        assert grads["model.embed_tokens.weight"] is not None
    lisa.remove()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == before


def test_flops_charge_no_backward_below_the_lowest_training_block_only():
    model = tiny_model("llama", layers=4)
    flops = StepFlops(model, seq_len=16)
    lisa = LISA(model, 1, period=1, seed=0)
    step = next(s for s in range(50) if lisa.active_at(s) == [2])
    lisa.begin_step(step)
    effect = lisa.step_effect(flops.names)["no_backward"]
    assert effect == [float(_block_of(name) < 2) for name in flops.names]
    assert 0 < flops.saved_fraction(no_backward=effect) < 1


def test_resume_continues_the_same_draws_and_counters():
    model = tiny_model("llama", layers=4)
    lisa = LISA(model, 2, period=2, seed=3)
    for step in range(5):
        lisa.begin_step(step)
    resumed = LISA(tiny_model("llama", layers=4), 2, period=2, seed=3)
    resumed.load_state_dict(lisa.state_dict())
    assert resumed.begin_step() == lisa.begin_step() and resumed.report() == lisa.report()
    with pytest.raises(ConfigError, match="saved for 4 blocks"):
        LISA(tiny_model("llama", layers=2), 1).load_state_dict(lisa.state_dict())


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="technique.layers"):
        apply_technique(tiny_model("llama", layers=2), "lisa", 0.0, options={"layers": 3}, option_prefix="technique.")
    with pytest.raises(ConfigError, match="technique.period"):
        apply_technique(tiny_model("llama", layers=2), "lisa", 0.0, options={"period": 0}, option_prefix="technique.")


def test_a_block_frozen_in_one_period_trains_in_the_next_through_the_optimizer():
    model = tiny_model("llama", "lora", layers=4)
    technique = apply_technique(model, "lisa", 0.0, options={"layers": 1, "period": 1}, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    moved_by_step = []
    for step in range(6):
        technique.policy.begin_step(step)
        loss = model(input_ids=token_batch(step), labels=token_batch(step)).loss
        technique.policy.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        moved_by_step.append({_block_of(n) for n, p in model.named_parameters() if n in start
                              and not torch.equal(p, start[n])})
    trained = {b for step in range(6) for b in technique.policy.active_at(step)}
    assert moved_by_step[-1] == trained and len(trained) > 1  # each block moved only once it had trained
    assert moved_by_step[0] == set(technique.policy.active_at(0))
