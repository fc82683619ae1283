"""The step runner as a driver: it owns the backward and the step boundaries (through the backend), accumulation
shares one mask, clipping and the schedule apply, and timing splits the phases."""
from __future__ import annotations

import pytest
import torch

from dropbp.backends import get
from dropbp.core import DropBP
from dropbp.recipes.training.optim import lr_scheduler
from dropbp.recipes.training.step import StepRunner

from ..conftest import tiny_model, token_batch
from ..numerics import assert_close_to_scale


@pytest.mark.parametrize("method", ["full", "lora"])
def test_all_dropped_step(method):
    model = tiny_model("llama", method)
    dropbp = DropBP(model, 0.5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = StepRunner(model, get("cpu"), optimizer, dropbp).step(0, [token_batch()], mask="all")
    assert torch.isfinite(torch.tensor(result.loss))
    assert dropbp.all_dropped_steps == 1 and result.backward_ran == (method == "full")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if method == "lora":
        assert dropbp.skipped_backward_steps == 1 and not changed
    else:
        assert dropbp.skipped_backward_steps == 0
        assert "model.embed_tokens.weight" in changed and "lm_head.weight" in changed
        assert not any(".self_attn." in n or ".mlp." in n for n in changed)


def test_accumulated_micro_batches_equal_one_batch_of_their_union():
    batches = [token_batch(seed=1), token_batch(seed=2)]
    results = []
    for micro in ([batches[0], batches[1]], [torch.cat(batches)]):
        model = tiny_model("llama", "full")
        dropbp = DropBP(model, 0.5, seed=3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        runner = StepRunner(model, get("cpu"), optimizer, dropbp, max_grad_norm=0.5)
        out = runner.step(7, micro)
        assert dropbp.steps_counted == 1 and out.tokens == sum(b.numel() for b in batches)
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, value in results[0].items():  # the mean of two equal-size micro-batch losses is the joint loss
        assert_close_to_scale(value, results[1][name], msg=name)  # two sums of halves vs one sum


def test_clipping_and_schedule_apply_and_timing_splits_the_phases():
    model = tiny_model("llama", "full")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = lr_scheduler(optimizer, warmup=2, total=4, lr_schedule="linear")
    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        norm = original(params, max_norm, *args, **kwargs)
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        return norm

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        runner = StepRunner(model, get("cpu"), optimizer, max_grad_norm=1e-3, scheduler=scheduler, timed=True)
        result = runner.step(0, [token_batch()])
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    assert seen and seen[0] == pytest.approx(1e-3, rel=1e-3)  # clipped to max_grad_norm
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)  # warm-up step 2 of 2
    forward, backward, step = result.phases
    assert forward > 0 and backward > 0 and step > 0
