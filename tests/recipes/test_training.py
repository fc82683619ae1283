"""The recipe training loop as a driver: it owns the backward and the step boundaries, through the backend."""
from __future__ import annotations

import pytest
import torch

from dropbp.backends import get
from dropbp.core import DropBP
from dropbp.recipes.training.step import training_step

from ..conftest import tiny_model, token_batch


@pytest.mark.parametrize("method", ["full", "lora"])
def test_all_dropped_training_step(method):
    model = tiny_model("llama", method)
    dropbp = DropBP(model, 0.5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = training_step(model, token_batch(), optimizer, dropbp, get("cpu"), step=0, mask="all")
    assert torch.isfinite(torch.tensor(loss))
    assert dropbp.all_dropped_steps == 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if method == "lora":
        assert dropbp.skipped_backward_steps == 1 and not changed
    else:
        assert dropbp.skipped_backward_steps == 0
        assert "model.embed_tokens.weight" in changed and "lm_head.weight" in changed
        assert not any(".self_attn." in n or ".mlp." in n for n in changed)
