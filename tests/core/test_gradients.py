"""Dropped branches pass no gradient and keep their forward value; with nothing dropped, training is unchanged."""
from __future__ import annotations

import copy

import pytest
import torch

from dropbp.core import DropBP
from dropbp.core.hooks import detach_outputs as _detach

from ..conftest import loss_and_grads, tiny_model, token_batch
from ..numerics import assert_close_to_scale

CASES = [(arch, method) for arch in ("llama", "gpt2") for method in ("full", "lora")]
MASKS = [(True, False, False, True), (False, True, True, False), (True, True, True, False)]


def constant_branch_reference(model, branch_names):
    """The same model where each named branch's output is replaced by a constant tensor holding its value."""
    reference = copy.deepcopy(model)
    modules = dict(reference.named_modules())
    for name in branch_names:
        modules[name].register_forward_hook(lambda module, args, output: _detach(output))
    return reference


def branch_params(model, branch_name):
    prefix = branch_name + "."
    return {n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)}


@pytest.mark.parametrize("arch,method", CASES)
@pytest.mark.parametrize("mask", MASKS)
def test_dropped_branch_grads(arch, method, mask):
    model = tiny_model(arch, method)
    batch = token_batch()
    dropbp = DropBP(model, 0.5)
    dropped = [b.name for b, m in zip(dropbp.branches, mask) if m]
    reference = constant_branch_reference(model, dropped)

    dropbp.begin_step(0, mask=list(mask))
    loss, grads = loss_and_grads(model, batch)
    ref_loss, ref_grads = loss_and_grads(reference, batch)

    assert_close_to_scale(loss, ref_loss, msg="loss")  # hooks vs a detached copy: two graphs
    dropped_params = set().union(*(branch_params(model, name) for name in dropped))
    assert dropped_params, "a dropped branch should own trainable parameters"
    for name in dropped_params:
        assert grads[name] is None, f"{name} belongs to a dropped branch but got a gradient"
    for name, grad in grads.items():
        if name in dropped_params:
            continue
        assert (grad is None) == (ref_grads[name] is None), name
        if grad is not None:
            assert_close_to_scale(grad, ref_grads[name], msg=name)
    # kept branches really are trained: at least one kept-branch parameter has a non-zero gradient
    kept = [b.name for b, m in zip(dropbp.branches, mask) if not m]
    assert any(grads[n] is not None and grads[n].abs().sum() > 0 for k in kept for n in branch_params(model, k))


def test_pre_norm_of_dropped_branch_gets_no_gradient():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    dropbp.begin_step(0, mask=["model.layers.0.self_attn"])
    _, grads = loss_and_grads(model, token_batch())
    assert grads["model.layers.0.input_layernorm.weight"] is None
    assert grads["model.layers.0.post_attention_layernorm.weight"] is not None


@pytest.mark.parametrize("arch,method", CASES)
def test_nothing_dropped_is_bit_identical(arch, method):
    plain = tiny_model(arch, method)
    wrapped = copy.deepcopy(plain)
    dropbp = DropBP(wrapped, 0.5)
    batch = token_batch(1)
    for step in range(2):
        dropbp.begin_step(step, mask="none")
        loss, grads = loss_and_grads(wrapped, batch)
        ref_loss, ref_grads = loss_and_grads(plain, batch)
        assert torch.equal(loss, ref_loss)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            assert torch.equal(grads[name], ref_grads[name]), name


def test_state_dict_keys_unchanged_and_remove_restores():
    model = tiny_model("llama", "lora")
    keys = list(model.state_dict().keys())
    dropbp = DropBP(model, 0.5)
    assert list(model.state_dict().keys()) == keys
    dropbp.begin_step(0, mask="all")
    dropbp.remove()
    _, grads = loss_and_grads(model, token_batch())
    assert all(g is not None for g in grads.values()), "after remove() nothing may be dropped"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_eval_mode_drops_nothing(method):
    model = tiny_model("llama", method)
    reference = copy.deepcopy(model).eval()
    dropbp = DropBP(model, 0.5)
    model.eval()
    dropbp.begin_step(0, mask="all")
    loss, grads = loss_and_grads(model, token_batch())
    ref_loss, ref_grads = loss_and_grads(reference, token_batch())
    assert torch.equal(loss, ref_loss)
    for name in grads:
        assert grads[name] is not None and torch.equal(grads[name], ref_grads[name]), name


def test_masks_follow_sampler_and_realised_rates_are_reported():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5, seed=3)
    masks = [dropbp.begin_step(step) for step in range(40)]
    assert masks == [tuple(dropbp.sampler.mask(s).tolist()) for s in range(40)]
    counts = [sum(m[i] for m in masks) / 40 for i in range(len(dropbp.branches))]
    assert dropbp.realized_rates() == counts
    report = dropbp.report()
    assert report["steps"] == 40 and len(report["branches"]) == 4
    assert report["branches"][0]["asked_rate"] == 0.5
