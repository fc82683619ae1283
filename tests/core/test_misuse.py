"""The engine survives misuse and interrupts: one engine per model, grad mode that no exception can leak, steps
counted only when their mask takes effect, and defined copies (deepcopy carries its own engine; pickle unwraps)."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from dropbp.core import DropBP
from dropbp.core.errors import ConfigError

from ..conftest import loss_and_grads, tiny_model, token_batch
from .test_branches import hook_count


def test_a_second_engine_is_refused_and_the_model_left_untouched():
    model = tiny_model("llama")
    first = DropBP(model, 0.5)
    hooks = hook_count(model)
    for target in (model, model.model, model.model.layers[0]):
        with pytest.raises(ConfigError, match=r"already wrapped by DropBP\(4 branches.*remove\(\)"):
            DropBP(target, 0.5)
        assert hook_count(model) == hooks
    assert DropBP.of(model) is first and DropBP.of(model.model.layers[1]) is first
    first.remove()
    assert hook_count(model) == 0 and DropBP.of(model) is None
    second = DropBP(model, 0.5)  # allowed once the first is off
    with pytest.raises(ConfigError, match="already wrapped"):
        first.attach()
    assert DropBP.of(model) is second and hook_count(model) == hooks


def test_keyboard_interrupt_inside_a_dropped_branch_leaves_the_next_step_exact():
    model = tiny_model("llama", "full")
    reference = copy.deepcopy(model)  # never wrapped
    dropbp = DropBP(model, 0.5)
    interrupt = {"armed": True}

    def raise_once(module, args, output):
        if interrupt.pop("armed", False):
            raise KeyboardInterrupt

    handle = model.model.layers[1].self_attn.o_proj.register_forward_hook(raise_once)
    dropbp.begin_step(0, mask="all")
    with pytest.raises(KeyboardInterrupt):
        model(input_ids=token_batch(), labels=token_batch())
    handle.remove()
    dropbp.begin_step(1, mask="none")  # an ordinary step: everything kept
    assert torch.is_grad_enabled()
    loss, grads = loss_and_grads(model, token_batch())
    ref_loss, ref_grads = loss_and_grads(reference, token_batch())
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    assert all(g is not None and torch.equal(g, ref_grads[n]) for n, g in grads.items())
    assert dropbp.interrupted_forwards == 1


def test_a_forward_after_an_interrupt_recovers_before_the_embedding():
    """Without a begin_step in between, the model's own pre-hook restores grad mode before anything runs."""
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    dropbp.begin_step(0, mask=["model.layers.0.mlp"])

    def interrupt(module, args, output):
        raise KeyboardInterrupt

    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        model(input_ids=token_batch(), labels=token_batch())
    handle.remove()
    assert not torch.is_grad_enabled()  # what PyTorch leaves behind: always_call hooks skip KeyboardInterrupt
    _, grads = loss_and_grads(model, token_batch())
    assert torch.is_grad_enabled()
    assert grads["model.embed_tokens.weight"] is not None and grads["model.layers.0.mlp.up_proj.weight"] is None
    assert grads["model.layers.0.self_attn.q_proj.weight"] is not None


def test_report_counts_only_steps_whose_mask_takes_effect():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    dropbp.remove()
    dropbp.begin_step(0, mask="all")
    _, grads = loss_and_grads(model, token_batch())
    assert all(g is not None for g in grads.values())  # nothing was dropped ...
    report = dropbp.report()
    assert report["steps"] == 0 and report["realized_drop_fraction"] == 0.0  # ... and nothing is reported
    assert report["uncounted_steps"] == 1
    dropbp.attach()
    model.eval()
    dropbp.begin_step(1, mask="all")
    assert dropbp.report()["steps"] == 0 and dropbp.uncounted_steps == 2
    model.train()
    dropbp.begin_step(2, mask="all")
    assert dropbp.report()["steps"] == 1 and dropbp.report()["realized_drop_fraction"] == 1.0


def test_attach_starts_from_a_kept_mask():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    dropbp.remove()
    dropbp.begin_step(0, mask="all")  # not in effect, not counted
    dropbp.attach()
    assert dropbp.mask == (False,) * 4
    _, grads = loss_and_grads(model, token_batch())
    assert all(g is not None for g in grads.values())


def test_deepcopy_carries_its_own_engine():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5, seed=7)
    clone = copy.deepcopy(model)
    twin = DropBP.of(clone)
    assert twin is not None and twin is not dropbp and twin.attached and twin.seed == 7
    dropbp.begin_step(0, mask="all")  # the original's mask does not reach the copy
    _, grads = loss_and_grads(clone, token_batch())
    assert all(g is not None for g in grads.values())
    twin.begin_step(0, mask=["model.layers.1.mlp"])
    _, grads = loss_and_grads(clone, token_batch())
    assert grads["model.layers.1.mlp.up_proj.weight"] is None and grads["model.layers.0.mlp.up_proj.weight"] is not None
    twin.remove()  # takes the hooks off the copy, and only there
    assert hook_count(clone) == 0 and DropBP.of(model) is dropbp and hook_count(model) > 0


def test_a_saved_and_loaded_model_is_unwrapped():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    dropbp.begin_step(0, mask="all")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert DropBP.of(loaded) is None
    _, grads = loss_and_grads(loaded, token_batch())
    assert all(g is not None for g in grads.values())  # inert hooks: nothing dropped
    again = DropBP(loaded, 0.5)
    again.begin_step(0, mask="all")
    _, grads = loss_and_grads(loaded, token_batch())
    assert grads["model.layers.0.mlp.up_proj.weight"] is None


@pytest.mark.parametrize("rates", ["0.5", b"0.5", {"a": 0.5}, 0.5])
def test_rates_must_be_a_list(rates):
    with pytest.raises(ConfigError, match="rates must be a list of 4 numbers"):
        DropBP(tiny_model("llama"), rates=rates)


def test_a_train_mode_wrapper_around_eval_mode_blocks_counts_nothing_and_warns_once_naming_model_train():
    """A PEFT model from ``from_pretrained`` is a wrapper in train mode around blocks in eval mode: the branch hooks
    drop nothing there, so the engine must not report drops (the README's loop, without ``model.train()``)."""
    model = tiny_model("llama", "lora")
    model.eval()
    model.training = True  # the wrapper alone, as PEFT's from_pretrained leaves it
    dropbp = DropBP(model, 0.5)
    with pytest.warns(RuntimeWarning, match=r"eval mode; call model\.train\(\)") as caught:
        for step in range(3):
            dropbp.begin_step(step, mask="all")
            _, grads = loss_and_grads(model, token_batch())
    assert len([w for w in caught if "cannot drop" in str(w.message)]) == 1
    assert all(g is not None for g in grads.values())  # every LoRA weight got its gradient: nothing was dropped
    report = dropbp.report()
    assert report["steps"] == 0 and report["uncounted_steps"] == 3 and report["realized_drop_fraction"] == 0.0
    model.train()
    assert dropbp.begin_step(3, mask="all") == (True,) * 4 and dropbp.report()["steps"] == 1


def test_branches_in_eval_mode_are_neither_dropped_nor_counted_as_dropped():
    model = tiny_model("llama", "full")
    dropbp = DropBP(model, 0.5)
    model.model.layers[0].eval()  # the first block's two branches cannot drop
    assert dropbp.begin_step(0, mask="all") == (False, False, True, True)
    assert dropbp.realized_rates() == [0.0, 0.0, 1.0, 1.0]
