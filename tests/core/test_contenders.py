"""LayerDrop, Progressive Layer Dropping and layer freezing: the alternatives the regime benchmark compares."""
from __future__ import annotations

import math

import pytest
import torch

from dropbp.core.branches import find_blocks
from dropbp.core.errors import ConfigError
from dropbp.core.freezing import blocks_for_backward_budget, freeze_bottom_layers
from dropbp.core.layerdrop import (LayerDrop, equal_flops_layerdrop_rate, pld_keep_probability, pld_mean_drop,
                                   pld_theta_for_drop)
from tests.conftest import loss_and_grads, tiny_model, token_batch
from ..numerics import assert_close_to_scale


def _block_io(model, block_index: int, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream entering and leaving one block in a forward pass."""
    _, block = find_blocks(model)[block_index]
    seen = {}
    pre = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(x=kwargs.get("hidden_states", args[0] if args else None)), with_kwargs=True)
    post = block.register_forward_hook(lambda m, args, out: seen.update(y=out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=batch)
    finally:
        pre.remove()
        post.remove()
    return seen["x"], seen["y"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_layerdrop_p1_is_identity_on_the_residual_stream(method):
    model = tiny_model("llama", method, layers=3)
    layerdrop = LayerDrop(model, 1.0, seed=0)
    layerdrop.begin_step(0)
    assert layerdrop.mask == (True, True, True)
    x, y = _block_io(model, 1, token_batch())
    assert torch.equal(x, y)
    loss = model(input_ids=token_batch(), labels=token_batch()).loss
    if method == "lora":  # every adapter sits in a dropped block: nothing to train
        assert not loss.requires_grad and layerdrop.backward(loss) is False


def test_kept_blocks_are_rescaled_and_eval_is_untouched():
    model = tiny_model("llama", layers=2)
    batch = token_batch()
    plain_x, plain_y = _block_io(model, 0, batch)
    layerdrop = LayerDrop(model, 0.5, seed=0)
    layerdrop._mask, layerdrop._keep = (False, False), (0.5, 0.5)  # a step that keeps both blocks
    x, y = _block_io(model, 0, batch)
    assert_close_to_scale(y, x + (plain_y - plain_x) / 0.5, msg="rescaled block")  # a formula vs the hook
    model.eval()
    _, y_eval = _block_io(model, 0, batch)
    assert torch.equal(y_eval, plain_y)  # eval: the same computation
    layerdrop.remove()
    model.train()
    assert torch.equal(_block_io(model, 0, batch)[1], plain_y)  # removed: the same computation


def test_layerdrop_masks_are_a_function_of_seed_and_step():
    a = LayerDrop(tiny_model(layers=4), 0.5, seed=3)
    b = LayerDrop(tiny_model(layers=4), 0.5, seed=3)
    masks = [a.begin_step(s) for s in range(50)]
    assert [b.mask_at(s) for s in reversed(range(50))] == masks[::-1]
    assert masks != [LayerDrop(tiny_model(layers=4), 0.5, seed=4).mask_at(s) for s in range(50)]
    assert 0.3 < a.realized_drop_fraction() < 0.7


def test_layerdrop_drops_gradients_of_dropped_blocks_only():
    model = tiny_model("llama", layers=3)
    layerdrop = LayerDrop(model, 0.5, seed=0, rescale=False)
    step = next(s for s in range(100) if layerdrop.mask_at(s) == (False, True, False))
    layerdrop.begin_step(step)
    _, grads = loss_and_grads(model, token_batch())
    for name, grad in grads.items():
        if ".layers.1." in name:
            assert grad is None, name
        elif ".layers." in name:
            assert grad is not None, name


@pytest.mark.parametrize("step,position,layers,theta_bar,gamma", [(0, 4, 4, 0.5, 0.01), (100, 1, 4, 0.5, 0.01),
                                                                    (100, 4, 4, 0.5, 0.01), (10**6, 8, 8, 0.3, 0.1)])
def test_pld_keep_probability_follows_its_formula(step, position, layers, theta_bar, gamma):
    theta = (1 - theta_bar) * math.exp(-gamma * step) + theta_bar
    expected = 1 - position / layers * (1 - theta)
    assert pld_keep_probability(step, position, layers, theta_bar=theta_bar, gamma=gamma) == pytest.approx(expected)


def test_pld_starts_full_and_drops_deeper_blocks_more():
    assert pld_keep_probability(0, 3, 4) == 1.0
    late = [pld_keep_probability(10**6, pos, 4, theta_bar=0.5) for pos in range(1, 5)]
    assert late == sorted(late, reverse=True) and late[-1] == pytest.approx(0.5)
    engine = LayerDrop.progressive(tiny_model(layers=4), theta_bar=0.5, gamma=0.05, seed=1)
    assert engine.keep_probabilities(0) == [1.0] * 4
    assert engine.begin_step(0) == (False,) * 4
    fractions = []
    for epoch in range(2):
        drops = [sum(engine.begin_step(s)) for s in range(epoch * 400, epoch * 400 + 400)]
        fractions.append(sum(drops) / (400 * 4))
    assert fractions[0] < fractions[1]  # the keep probability falls over time


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_pld_masks_are_a_function_of_seed_and_step():
    def engine(seed):
        return LayerDrop.progressive(tiny_model(layers=4), theta_bar=0.3, gamma=0.05, seed=seed)

    first, second = engine(7), engine(7)
    masks = [first.begin_step(s) for s in range(60)]
    assert [second.mask_at(s) for s in range(59, -1, -1)] == masks[::-1]  # any order, same masks
    assert masks != [engine(8).mask_at(s) for s in range(60)]


def test_pld_theta_matches_a_target_average_drop():
    theta = pld_theta_for_drop(0.3, gamma=0.02, num_layers=16, total_steps=300)
    assert pld_mean_drop(theta, 0.02, 16, 300) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="out of reach"):
        pld_theta_for_drop(0.9, gamma=0.02, num_layers=16, total_steps=300)


def test_equal_flops_layerdrop_rate():
    assert equal_flops_layerdrop_rate(0.75, backward_ratio=1.0) == pytest.approx(0.375)
    assert equal_flops_layerdrop_rate(0.75, backward_ratio=2.0) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_freezing_leaves_frozen_blocks_grads_none(method):
    model = tiny_model("llama", method, layers=4)
    frozen = freeze_bottom_layers(model, 1)
    assert len(frozen.frozen_blocks) == 3 and frozen.trained_blocks[0].endswith("layers.3")
    model(input_ids=token_batch(), labels=token_batch()).loss.backward()
    for name, param in model.named_parameters():
        under_bottom = any(name.startswith(block + ".") for block in frozen.frozen_blocks) or "embed_tokens" in name
        if under_bottom:
            assert param.grad is None and not param.requires_grad, name
        elif ".layers.3." in name and param.requires_grad:
            assert param.grad is not None, name
    frozen.unfreeze()
    assert all(p.requires_grad for p in frozen.frozen_parameters)


def test_freezing_budget_and_errors():
    assert blocks_for_backward_budget(16, 0.75) == 4
    assert blocks_for_backward_budget(16, 0.99) == 1
    with pytest.raises(ConfigError, match="train_top"):
        freeze_bottom_layers(tiny_model(layers=2), 3)
    with pytest.raises(ConfigError, match="drop_rate"):
        LayerDrop(tiny_model(layers=2), 1.5)


def test_apply_technique_is_one_entry_point_and_remove_restores_the_model():
    from dropbp.core import DropBP, apply_technique

    batch = token_batch()
    for technique, kind in (("dropbp", DropBP), ("layerdrop", LayerDrop), ("pld", LayerDrop)):
        model = tiny_model(layers=4)
        before = model(input_ids=batch).logits
        applied = apply_technique(model, technique, 0.5, seed=1)
        assert isinstance(applied.policy, kind) and applied.policy.begin_step(3) == applied.policy.mask
        applied.remove()
        assert torch.equal(model(input_ids=batch).logits, before)  # removed: the same computation
    model = tiny_model(layers=4)
    applied = apply_technique(model, "freeze", 0.75)
    assert len(applied.frozen.trained_blocks) == 1 and "the top 1 of 4 blocks" in applied.describe()
    applied.remove()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="technique must be one of dropbp, layerdrop, pld, freeze"):
        apply_technique(model, "stochastic-depth", 0.5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_freeze_dropbp_freezes_the_bottom_and_drops_branches_above(method):
    from dropbp.core import apply_technique

    model = tiny_model("llama", method, layers=4)
    applied = apply_technique(model, "freeze-dropbp", 0.5, options={"train_top_layers": 2})
    assert "the top 2 of 4 blocks" in applied.describe() and "DropBP(4 branches" in applied.describe()
    assert [b.layer for b in applied.policy.branches] == [2, 2, 3, 3]
    applied.policy.begin_step(0, mask=[True, False, False, False])  # layer 2's attention dropped
    model(input_ids=token_batch(), labels=token_batch()).loss.backward()
    for name, param in model.named_parameters():
        if ".layers.0." in name or ".layers.1." in name or "embed_tokens" in name:
            assert param.grad is None and not param.requires_grad, name  # frozen
        elif ".layers.2.self_attn." in name or ".layers.2.input_layernorm." in name:
            assert param.grad is None, name  # the dropped branch and its pre-norm
        elif (".layers.2.mlp." in name or ".layers.3." in name) and param.requires_grad:
            assert param.grad is not None, name
    applied.remove()
    assert all(p.requires_grad for p in applied.frozen.frozen_parameters) and not applied.policy.attached
    with pytest.raises(ConfigError, match="train_top_layers must be an integer in 1..4"):
        apply_technique(tiny_model(layers=4), "freeze-dropbp", 0.5, options={"train_top_layers": 5}, option_prefix="dropbp.")
