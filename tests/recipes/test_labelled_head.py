"""The head and the loss on labelled positions only: the loss and every gradient equal the full computation (full
fine-tuning and LoRA, tied and untied heads, with DropBP dropping branches), and the head really runs on fewer rows."""
from __future__ import annotations

import pytest
import torch

from dropbp.core import DropBP
from dropbp.recipes.data.instruct import IGNORE
from dropbp.recipes.training.labelled_head import (head_is_exact, labelled_fraction, labelled_positions_loss,
                                                   output_head)
from dropbp.recipes.training.step import causal_lm_loss

from ..conftest import seeded_model, tiny_config, token_batch
from ..numerics import assert_close_to_scale


def answer_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with labels only on a short answer after a prompt of varying length, then padding."""
    ids = token_batch(seed, batch=3, seq=16)
    labels = torch.full_like(ids, IGNORE)
    for row, (start, end) in enumerate([(5, 8), (9, 11), (3, 7)]):
        labels[row, start:end] = ids[row, start:end]
    return ids, labels


def grads_of(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("drop", [False, True])
def test_loss_and_every_gradient_equal_the_full_head(method, tied, drop):
    config = tiny_config("llama")
    config.tie_word_embeddings = tied
    model = seeded_model(config, method)
    if drop:
        engine = DropBP(model, 0.5, seed=1)
    batch = answer_batch()
    results = []
    for loss_fn in (causal_lm_loss, labelled_positions_loss):
        if drop:
            engine.begin_step(4)  # the same mask for both
        results.append(grads_of(model, loss_fn, batch))
    (full_loss, full_grads), (loss, grads) = results
    assert_close_to_scale(loss, full_loss, msg="loss")  # a subset of rows: another summation order
    assert grads.keys() == full_grads.keys() and grads
    head_weight = "lm_head.weight" if not tied else "model.embed_tokens.weight"
    assert method == "lora" or any(n.endswith(head_weight) for n in grads)
    for name, grad in full_grads.items():
        assert_close_to_scale(grads[name], grad, msg=name)


def test_the_head_runs_on_the_labelled_rows_only():
    model = seeded_model(tiny_config("llama"))
    ids, labels = answer_batch()
    seen = []
    handle = output_head(model).register_forward_hook(lambda _m, args, out: seen.append(args[0].shape))
    labelled_positions_loss(model, (ids, labels))
    handle.remove()
    expected = int((labels[:, 1:] != IGNORE).sum())
    assert seen == [torch.Size([1, expected, model.config.hidden_size])]
    assert labelled_fraction(labels) == pytest.approx(expected / labels.numel())


def test_exactness_probe_accepts_a_standard_head_and_refuses_a_changed_one():
    model = seeded_model(tiny_config("llama"))
    batch = answer_batch()
    assert head_is_exact(model, batch)
    assert model.training  # the probe leaves the mode as it found it
    model.lm_head.register_forward_hook(lambda _m, _args, out: out.flip(1))  # a head whose rows depend on position
    assert not head_is_exact(model, batch)


def test_cached_greedy_decoding_gives_the_uncached_tokens():
    """The exact-match decode carries the prefix in the key-value cache; it produces the tokens a full forward per
    token produces, also once the window is full and it slides."""
    from contextlib import nullcontext

    from dropbp.recipes.training.evaluation import greedy_answer

    model = seeded_model(tiny_config("llama")).eval()
    ids = token_batch(3, batch=1, seq=10)[0].tolist()

    def uncached(seq_len: int, steps: int) -> list[int]:
        produced = []
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([(ids + produced)[-seq_len:]])).logits
            produced.append(int(logits[0, -1].argmax()))
        return produced

    for seq_len in (16, 12):  # room for every new token; a window that fills after two
        got = greedy_answer(model, ids, None, seq_len=seq_len, max_new_tokens=6, device=torch.device("cpu"),
                            autocast=nullcontext)
        assert got == uncached(seq_len, 6)
