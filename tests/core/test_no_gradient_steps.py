"""Steps that leave no trainable path never crash, whoever calls backward: plain ``loss.backward()``,
``accelerator.backward(loss)``; no parameter gets a gradient, and the engine counts the step by its mask."""
from __future__ import annotations

import pytest
import torch

from dropbp.core import DropBP

from ..conftest import tiny_model, token_batch


def lora_on(model, targets):
    from peft import LoraConfig, get_peft_model

    from dropbp.core.seeding import seeded

    with seeded(0):
        return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets)).train()


CASES = {
    # name: (LoRA target modules, mask, whether a trainable path remains)
    "every branch dropped": ("all-linear", "all", False),
    "every adapter-holding branch dropped": (["q_proj", "v_proj"],
                                             ["base_model.model.model.layers.0.self_attn",
                                              "base_model.model.model.layers.1.self_attn"], False),
    "LoRA on a subset, its branches dropped": (["down_proj"],
                                               ["base_model.model.model.layers.0.mlp",
                                                "base_model.model.model.layers.1.mlp"], False),
    "LoRA on a subset, one of its branches kept": (["down_proj"], ["base_model.model.model.layers.0.mlp"], True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("caller", ["loss.backward", "accelerator.backward"])
def test_plain_backward_runs_and_no_parameter_gets_a_gradient(case, caller):
    targets, mask, path = CASES[case]
    model = lora_on(tiny_model("llama"), targets)
    dropbp = DropBP(model, 0.5)
    dropbp.begin_step(0, mask=mask)
    assert dropbp.has_trainable_path() is path
    loss = model(input_ids=token_batch(), labels=token_batch()).loss
    assert loss.requires_grad
    if caller == "loss.backward":
        loss.backward()
    else:
        from accelerate import Accelerator

        Accelerator(cpu=True).backward(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    if path:
        assert any(g is not None for g in grads.values())
    else:
        assert all(g is None for g in grads.values())
    report = dropbp.report()
    assert report["steps"] == 1 and report["no_trainable_path_steps"] == (0 if path else 1)


def test_the_loss_value_is_unchanged_by_the_anchor():
    model = lora_on(tiny_model("llama"), "all-linear")
    reference = model(input_ids=token_batch(), labels=token_batch()).loss.detach()
    dropbp = DropBP(model, 0.5)
    dropbp.begin_step(0, mask="all")
    loss = model(input_ids=token_batch(), labels=token_batch()).loss
    assert torch.equal(loss.detach(), reference)  # dropping changes no forward value; the anchor adds exactly 0


def test_full_fine_tuning_always_has_a_path_and_the_engine_backward_skips_empty_steps():
    full = tiny_model("llama", "full")
    dropbp = DropBP(full, 0.5)
    assert dropbp.has_trainable_path("all")  # embeddings and head still train
    dropbp.remove()
    model = lora_on(tiny_model("llama"), "all-linear")
    engine = DropBP(model, 0.5)
    engine.begin_step(0, mask="all")
    assert engine.backward(model(input_ids=token_batch(), labels=token_batch()).loss) is False
    assert engine.skipped_backward_steps == 1 and engine.no_trainable_path_steps == 1
