"""Structural branch discovery on 27 decoder types with no names given: the branches found, gradients against an
independent detach reference for random masks (full and LoRA), and the FLOPs model against a FLOP counter."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dropbp.core import DropBP, find_branches
from dropbp.core.block_layout import block_layout, find_block_list
from dropbp.core.errors import NoMatchingBranchError
from dropbp.core.exactness import check_masks

from ..conftest import token_batch
from ..decoder_zoo import DECODER_TYPES, ONE_PER_SHAPE, decoder_model

#: Where a branch ends when not at its first module, and the block shapes read from the forward.
ENDS = {"gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
        "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
        "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm"), "opt": ("", "fc2")}
SHAPES = {"gemma2": "sandwich-norm", "gemma3_text": "sandwich-norm", "olmo2": "post-norm", "gptj": "parallel",
          "bloom": "residual inside the branches", "llama": "pre-norm", "opt": "pre-norm"}
FAST = sorted(set(ONE_PER_SHAPE.values()))
#: Every type, the ones of ``FAST`` in the fast lane and the rest in ``make test`` only.
EVERY_TYPE = [t if t in FAST else pytest.param(t, marks=pytest.mark.slow) for t in DECODER_TYPES]


@pytest.mark.parametrize("model_type", EVERY_TYPE)
def test_every_decoder_type_is_found_by_structure(model_type):
    model = decoder_model(model_type, layers=3)
    found = find_branches(model)
    assert [(b.layer, b.kind) for b in found.branches] == [(l, k) for l in range(3) for k in ("attn", "mlp")]
    ends = ENDS.get(model_type, ("", ""))
    for branch in found.branches:
        end = ends[0] if branch.kind == "attn" else ends[1]
        assert branch.end.endswith("." + end) if end else branch.end == "", (branch, end)
        assert branch.flops > 0
    if model_type in SHAPES:
        assert set(found.block_shapes.values()) == {SHAPES[model_type]}
    assert (found.parts[0].residual is not None) == (model_type == "bloom")


def _check_gradients(model_type, method):
    model = decoder_model(model_type, method)
    found = find_branches(model)
    rng = random.Random(f"{model_type}-{method}")
    batch = token_batch()
    try:
        model(input_ids=batch, labels=batch)
    except AttributeError as error:  # before any DropBP: the model itself fails
        if (model_type, method) == ("phimoe", "lora"):
            pytest.skip(f"PEFT's all-linear LoRA wraps PhiMoE's router, a Linear whose forward returns a tuple, and "
                        f"the model then fails without DropBP ({error})")
        raise
    masks = []
    for _ in range(3):
        mask = [rng.random() < 0.5 for _ in found.branches]
        mask[rng.randrange(len(mask))] = True  # at least one branch dropped
        masks.append(mask)
    for check in check_masks(model, masks, batch):
        assert check.exact, check
        assert model_type == "bloom" or check.max_abs_diff == 0.0  # bit for bit (BLOOM: within RESIDUAL_RTOL)
    assert DropBP.of(model) is None


@pytest.mark.parametrize("model_type", FAST)
def test_gradients_match_the_detach_reference_one_decoder_per_block_shape(model_type):
    _check_gradients(model_type, "full")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_gradients_match_the_detach_reference_every_decoder(model_type, method):
    _check_gradients(model_type, method)


@pytest.mark.parametrize("model_type", EVERY_TYPE)
def test_flops_model_matches_a_flop_counter(model_type):
    """Each branch's forward FLOPs per token against FlopCounterMode over its modules (eager attention and experts,
    so every product is seen), within 5%: dense, mixture-of-experts and latent-attention blocks."""
    seq = 16
    model = decoder_model(model_type).eval()
    found = find_branches(model, seq_len=seq)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(token_batch(batch=1, seq=seq))
    counts = {name.split(".", 1)[1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if "." in name}
    names = {id(m): n for n, m in model.named_modules()}
    for branch, part in zip(found.branches, found.parts):
        measured = sum(counts.get(names[id(member)], 0) for member in part.members) / seq
        assert measured > 0 and abs(branch.flops / measured - 1) <= 0.05, (branch, measured)


def test_refusals_name_what_is_missing():
    model = decoder_model("llama")
    block = find_block_list(model)[1][0]
    block.extra_attn = type("CrossAttention", (torch.nn.Module,), {})()
    with pytest.raises(NoMatchingBranchError, match="no decoder blocks"):
        find_branches(model)
    del block.extra_attn
    block.mlp2 = copy.deepcopy(block.mlp)
    with pytest.raises(NoMatchingBranchError, match=r"2 MLP-like modules \(mlp, mlp2\); pass attn= and mlp="):
        block_layout(block)
    assert len(find_branches(model, mlp="re:.*layers\\.\\d+\\.mlp").branches) == 4  # names given: no ambiguity


def test_source_unreadable_falls_back_to_registration_order(monkeypatch):
    import inspect

    model = decoder_model("opt")
    monkeypatch.setattr(inspect, "getsource", lambda obj: (_ for _ in ()).throw(OSError("no source")))
    found = find_branches(model)
    assert [b.end.rsplit(".", 1)[-1] for b in found.branches[:2]] == ["", "fc2"]
