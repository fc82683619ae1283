"""A dropped branch that still trains its output projection: that layer gets exactly the gradient it gets when its
branch is kept under the same mask elsewhere, and every other parameter gets what plain DropBP gives it."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from dropbp.core import DropBP
from dropbp.core.output_projection import output_projection

from ..conftest import loss_and_grads, tiny_model, token_batch
from ..numerics import assert_close_to_scale

MASK = (True, False, True, True)  # layer 0 attention, layer 1 attention and MLP dropped


def _grads(model, mask, **engine):
    """The loss and gradients of ``model`` (a copy of it) under ``mask``, with an engine built with ``engine``."""
    model = copy.deepcopy(model)
    dropbp = DropBP(model, 0.5, **engine)
    dropbp.begin_step(0, mask=mask if isinstance(mask, str) else list(mask))
    return (*loss_and_grads(model, token_batch()), dropbp)


def _projection_params(dropbp, index):
    """Names of the trainable parameters of branch ``index``'s output projection, in the engine's model."""
    layer = output_projection(dropbp._parts[index].last)
    names = {id(p): n for n, p in dropbp._model.named_parameters() if p.requires_grad}
    return {names[id(p)] for p in layer.parameters() if id(p) in names}


@pytest.mark.parametrize("arch,method", [("llama", "lora"), pytest.param("llama", "full", marks=pytest.mark.slow),
                                         ("gpt2", "lora"), pytest.param("gpt2", "full", marks=pytest.mark.slow)])
def test_a_dropped_branch_trains_its_output_projection_exactly(arch, method):
    model = tiny_model(arch, method)
    loss, grads, dropbp = _grads(model, MASK, train_output_projection=True)
    plain_loss, plain, _ = _grads(model, MASK)
    assert_close_to_scale(loss, plain_loss, msg="loss")
    assert dropbp.report()["trained_output_projections"] == 4
    projected: set[str] = set()
    for index, dropped in enumerate(MASK):
        if not dropped:
            continue
        mine = _projection_params(dropbp, index)
        assert mine and all("o_proj" in n or "down_proj" in n or "c_proj" in n for n in mine), mine
        projected |= mine
        # the same mask elsewhere, this branch kept: the projection's own gradient is the same
        _, kept, _ = _grads(model, [m and i != index for i, m in enumerate(MASK)])
        for name in mine:
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
            assert_close_to_scale(grads[name], kept[name], msg=name)
    # everything else (the rest of each dropped branch, the layers below it) is what plain DropBP gives
    for name, grad in grads.items():
        if name not in projected:
            assert (grad is None) == (plain[name] is None), name
            if grad is not None:
                assert_close_to_scale(grad, plain[name], msg=name)


def test_with_every_branch_dropped_lora_still_trains_the_projections():
    model = tiny_model("llama", "lora")
    _, plain, engine = _grads(model, "all")
    assert not engine.has_trainable_path("all") and all(g is None for g in plain.values())
    _, grads, engine = _grads(model, "all", train_output_projection=True)
    assert engine.has_trainable_path("all")
    trained = {n for n, g in grads.items() if g is not None}
    assert trained and all("o_proj" in n or "down_proj" in n for n in trained)
    assert all(g is None for n, g in grads.items() if "q_proj" in n or "gate_proj" in n)


def test_a_branch_that_changes_its_projections_output_warns_and_trains_nothing_there():
    model = tiny_model("llama", "full")
    for layer in model.model.layers:  # a scale after o_proj, inside the branch: the projection's output is not returned
        layer.self_attn.register_forward_hook(lambda module, args, output: (output[0] * 2.0, *output[1:]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, grads, _ = _grads(model, MASK, train_output_projection=True)
    messages = [str(w.message) for w in caught if "output projection" in str(w.message)]
    assert len(messages) == 2 and "model.layers.0.self_attn" in messages[0]
    assert grads["model.layers.0.self_attn.o_proj.weight"] is None
    assert grads["model.layers.1.mlp.down_proj.weight"] is not None  # the MLP returns down_proj's output


def test_off_by_default_and_found_by_structure():
    model = tiny_model("llama", "lora")
    assert DropBP(copy.deepcopy(model), 0.5).report()["trained_output_projections"] == 0
    layers = model.base_model.model.model.layers
    assert output_projection(layers[0].self_attn) is layers[0].self_attn.o_proj  # the PEFT layer, not its lora_B
    assert output_projection(layers[0].mlp) is layers[0].mlp.down_proj
    assert output_projection(layers[0].mlp.down_proj) is None  # a one-layer branch: nothing to keep apart


def test_the_same_gradients_under_activation_checkpointing():
    model = tiny_model("llama", "lora")
    _, plain, _ = _grads(model, MASK, train_output_projection=True)
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.enable_input_require_grads()
    _, grads, _ = _grads(checkpointed, MASK, train_output_projection=True)
    assert grads.keys() == plain.keys() and any("o_proj" in n and g is not None for n, g in grads.items())
    for name, grad in grads.items():
        assert (grad is None) == (plain[name] is None), name
        if grad is not None:
            assert_close_to_scale(grad, plain[name], msg=name)


def test_branches_with_no_projection_of_their_own_are_named_in_a_warning():
    model = tiny_model("llama", "full")
    hidden = model.config.hidden_size
    for layer in model.model.layers:  # an MLP branch that is one linear layer: nothing to train apart from it
        layer.mlp = torch.nn.Linear(hidden, hidden, bias=False)
    with pytest.warns(RuntimeWarning, match=r"2 of 4 branches .*model\.layers\.0\.mlp, model\.layers\.1\.mlp"):
        engine = DropBP(model, 0.5, train_output_projection=True)
    assert engine.report()["trained_output_projections"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DropBP(tiny_model("llama", "full"), 0.5, train_output_projection=True)  # every branch has one: no warning
