"""Activation checkpointing with DropBP (``train.gradient_checkpointing``): the same gradients and losses as without
it, and recomputation that follows the mask (a block whose branches are all dropped is not recomputed)."""
from __future__ import annotations

import pytest
import torch

from dropbp.core import DropBP
from dropbp.recipes import FineTune, load_recipe, shipped
from dropbp.recipes.model.build import apply_method, build_model, enable_checkpointing
from ..numerics import assert_close_to_scale

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)


def model_with(method: str, checkpointing: bool, reentrant: bool = False) -> torch.nn.Module:
    model = apply_method(build_model("tiny", seed=3, **SHAPE), method, lora_rank=4, seed=3)
    if checkpointing:
        enable_checkpointing(model, reentrant=reentrant)
    return model.train()


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_checkpointing_gives_the_gradients_of_no_checkpointing_under_random_masks(method, reentrant):
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    masks = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    grads = {}
    for checkpointing in (False, True):
        model = model_with(method, checkpointing, reentrant)
        dropbp = DropBP(model, drop_rate=0.5, seed=0)
        grads[checkpointing] = []
        for mask in masks.tolist():
            dropbp.begin_step(mask=mask)
            model(input_ids=ids, labels=ids).loss.backward()
            grads[checkpointing].append({n: p.grad.clone() for n, p in model.named_parameters()
                                         if p.grad is not None})
            model.zero_grad(set_to_none=True)
    for plain, checkpointed in zip(grads[False], grads[True]):
        assert plain.keys() == checkpointed.keys()
        for name in plain:
            assert_close_to_scale(checkpointed[name], plain[name], msg=name)  # recomputed: another graph


def test_recomputation_follows_the_mask():
    model = model_with("lora", True)
    dropbp = DropBP(model, drop_rate=0.5, seed=0)
    calls = {branch.name: 0 for branch in dropbp.branches}
    modules = dict(model.named_modules())
    for branch in dropbp.branches:
        modules[branch.name].register_forward_pre_hook(
            lambda module, args, name=branch.name: calls.__setitem__(name, calls[name] + 1))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    # block 0: both dropped; block 1: attention dropped, MLP kept; block 2: both kept
    dropbp.begin_step(mask=[True, True, True, False, False, False])
    loss = model(input_ids=ids, labels=ids).loss
    assert set(calls.values()) == {1}  # one forward each
    loss.backward()
    recomputed = [calls[b.name] - 1 for b in dropbp.branches]
    assert recomputed == [0, 0, 1, 1, 1, 1]  # the dropped attention of block 1 reruns only because its MLP needs it


def _recipe_losses(name, out, *extra):
    recipe = load_recipe(shipped()[name], ["train.steps=20", "train.eval_every=0", "train.exact_match=0", *extra],
                         device="cpu")
    job = FineTune(recipe, out, progress=False)
    job.setup()
    try:
        return [float(r["loss"]) for r in job.train()["rows"] if r["loss"]]
    finally:
        job.cleanup()


@pytest.mark.slow  # two 20-step runs per recipe; the fast lane keeps the gradient and recomputation tests
@pytest.mark.parametrize("name", ["tiny-tasks", "tiny-tasks-qlora"])
def test_a_recipe_with_checkpointing_trains_with_the_same_losses(tmp_path, name):
    """The tiny-tasks recipe (its own method) and its QLoRA variant (NF4 base weights through bitsandbytes on the CPU): checkpointing changes
    memory, not the run."""
    plain = _recipe_losses(name, tmp_path / "a")
    checkpointed = _recipe_losses(name, tmp_path / "b", "train.gradient_checkpointing=true")
    assert len(plain) == 20
    for step, (a, b) in enumerate(zip(checkpointed, plain)):  # each loss against its own scale
        assert_close_to_scale(torch.tensor(a), torch.tensor(b), msg=f"loss at step {step}")
