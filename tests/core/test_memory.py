"""Bytes saved for backward fall linearly with the number of dropped branches."""
from __future__ import annotations

import pytest

from dropbp.core import DropBP
from dropbp.core.memory import SavedActivationMeter

from ..conftest import tiny_model, token_batch


def saved_bytes(model, dropbp, mask) -> int:
    dropbp.begin_step(0, mask=mask)
    with SavedActivationMeter(exclude=model) as meter:
        loss = model(input_ids=token_batch(seq=32), labels=token_batch(seq=32)).loss
    del loss
    return meter.bytes


@pytest.mark.parametrize("arch,method", [("llama", "full"), ("llama", "lora"), ("gpt2", "full")])
def test_saved_bytes_linear_in_dropped_branches(arch, method):
    # width 128: the LM head's saved logits (vocab 64) stay small beside the branches, as in real models. Under
    # LoRA they are freed only when every branch is dropped (then nothing needs a gradient at all).
    model = tiny_model(arch, method, layers=4, width=128)
    dropbp = DropBP(model, 0.5)
    n = len(dropbp.branches)
    none, full = saved_bytes(model, dropbp, "none"), saved_bytes(model, dropbp, "all")
    assert full < 0.5 * none, "dropping every branch must release most saved activations"
    for kind in ("attn", "mlp"):
        indices = [i for i, b in enumerate(dropbp.branches) if b.kind == kind]
        per_kind = []
        for k in range(len(indices) + 1):
            mask = [i in indices[:k] for i in range(n)]
            per_kind.append(saved_bytes(model, dropbp, mask))
        for k, value in enumerate(per_kind):  # linear in the number of dropped branches of one kind
            linear = per_kind[0] + k / len(indices) * (per_kind[-1] - per_kind[0])
            assert abs(value - linear) <= 0.05 * linear, (kind, k, value, linear)
    # dropping everything, one layer at a time (both branches), is linear between none and all dropped
    layers = sorted({b.layer for b in dropbp.branches})
    for k in range(len(layers) + 1):
        mask = [b.layer in layers[:k] for b in dropbp.branches]
        linear = none + k / len(layers) * (full - none)
        assert abs(saved_bytes(model, dropbp, mask) - linear) <= 0.05 * linear, k


def test_meter_counts_only_what_stays_alive():
    import torch

    x = torch.randn(1000, requires_grad=True)
    with SavedActivationMeter() as meter:
        kept = (x * 2).sin()          # sin saves its input (4000 bytes), which stays alive with `kept`
        (x * 3).cos()                 # cos saves its input too, but the result is dropped at once
    assert meter.bytes == 4000, meter.bytes
    del kept
