"""The analytic memory model against saved-tensor measurements: within 10% at every drop rate, full and LoRA."""
from __future__ import annotations

import pytest
import torch

from dropbp.core.engine import DropBP
from dropbp.core.memory import saved_activation_bytes
from dropbp.core.memory_model import MemoryModel
from dropbp.core.samplers import PoolSampler

from ..conftest import lora

SHAPES = [dict(hidden_size=64, intermediate_size=176, num_hidden_layers=6, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256),
          dict(hidden_size=96, intermediate_size=272, num_hidden_layers=3, num_attention_heads=6,
               num_key_value_heads=6, vocab_size=700)]


def _model(method: str, shape: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=256, attention_dropout=0.0))
    return (lora(model, rank=8) if method == "lora" else model).train()


#: Every shape x method x checkpointing; the fast lane keeps one (GQA, LoRA, plain), make test runs all eight.
CASES = [pytest.param(shape, method, checkpointing,
                      id=f"{name}-{method}-{'checkpointed' if checkpointing else 'plain'}",
                      marks=() if (name, method, checkpointing) == ("gqa", "lora", False) else pytest.mark.slow)
         for shape, name in zip(SHAPES, ["gqa", "mha"])
         for method in ["full", "lora"]
         for checkpointing in [False, True]]


@pytest.mark.parametrize("shape,method,checkpointing", CASES)
def test_predicted_saved_bytes_within_10_percent_at_every_drop_rate(method, shape, checkpointing):
    model = _model(method, shape)
    if checkpointing:  # Hugging Face's non-reentrant checkpointing, as train.gradient_checkpointing sets it
        base = model.get_base_model() if method == "lora" else model
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    dropbp = DropBP(model, 0.0, seq_len=48)
    predictor = MemoryModel.from_shape(dropbp.shape, lora_rank=8 if method == "lora" else 0,
                                       checkpointing=checkpointing)
    batch = torch.randint(0, shape["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(0))
    for rate in (0.0, 0.25, 0.5, 0.75, 0.875):
        pool = PoolSampler([rate] * len(dropbp.branches), dropbp.flops, seed=0, size=8)
        for mask in pool.pool.tolist():
            with dropbp.forced_mask(mask):
                measured = saved_activation_bytes(model, batch)
            predicted = predictor.saved_bytes(mask, batch=2, seq_len=48)
            assert predicted == pytest.approx(measured, rel=0.10), (rate, mask)


def test_model_counts_state_like_the_model_holds_it():
    shape = SHAPES[0]
    for method, rank in (("full", 0), ("lora", 8)):
        model = _model(method, shape)
        predictor = MemoryModel.from_shape(DropBP.of(model) or DropBP(model, 0.0).shape, lora_rank=rank)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert predictor.trainable_parameters() == pytest.approx(trainable, rel=0.02), method


def test_kept_share_interpolates_between_nothing_and_everything():
    predictor = MemoryModel(hidden=64, intermediate=176, layers=8, heads=4, kv_heads=2, vocab=256)
    full = predictor.saved_bytes_per_token([False] * 16)
    none = predictor.saved_bytes_per_token([True] * 16)
    assert predictor.saved_bytes_per_token_at(1.0) == pytest.approx(full)
    assert predictor.saved_bytes_per_token_at(0.0) == pytest.approx(none)
    assert none < predictor.saved_bytes_per_token_at(0.5) < full
    assert MemoryModel(64, 176, 8, 4, 2, 256, lora_rank=8).saved_bytes_per_token([True] * 16) == 0.0


def test_meter_counts_nothing_for_dropped_branches_at_any_depth():
    """Regression: the meter once kept the graphs of dropped branches' pre-norms alive (a reference cycle through
    its own boxes), so an all-dropped full fine-tuning step 'saved' more with every layer. It must not grow."""
    saved = []
    for layers in (2, 6):
        model = _model("full", dict(SHAPES[0], num_hidden_layers=layers))
        dropbp = DropBP(model, 0.0)
        batch = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
        with dropbp.forced_mask("all"):
            saved.append(saved_activation_bytes(model, batch))
    assert saved[0] == saved[1] > 0  # only the head and the embedding's ids remain


def test_checkpointing_keeps_block_inputs_and_one_block_is_recomputed_at_a_time():
    plain = MemoryModel(hidden=64, intermediate=176, layers=8, heads=4, kv_heads=2, vocab=256)
    checkpointed = MemoryModel(hidden=64, intermediate=176, layers=8, heads=4, kv_heads=2, vocab=256,
                               checkpointing=True)
    everything, first_block_dropped = [False] * 16, [True, True] + [False] * 14
    assert checkpointed.saved_bytes_per_token(everything) - checkpointed.saved_bytes_per_token(
        first_block_dropped) == 64 * 4  # a block whose branches are all dropped keeps not even its input
    assert checkpointed.recompute_peak_per_token(everything) == pytest.approx(
        (plain.saved_bytes_per_token(everything) - plain.saved_bytes_per_token([True] * 16)) / 8)
    assert plain.recompute_peak_per_token(everything) == 0.0
    assert checkpointed.training_bytes(2, 64) < plain.training_bytes(2, 64)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_per_block_saved_bytes_match_the_predicted_recomputation(method):
    """What each block saves in a forward without checkpointing is what recomputing it holds with checkpointing:
    the meter's per-block attribution against the model's largest block, within 10%. The benchmark's cheaper
    measure (one checkpointed forward, then only the named blocks run again on their inputs) gives the same
    largest block and the same total as the plain measurements."""
    from dropbp.core.branches import find_blocks
    from dropbp.core.memory import captured_block_inputs, rerun_saved_bytes, saved_bytes_by_module

    model = _model(method, SHAPES[0])
    base = model.get_base_model() if method == "lora" else model
    dropbp = DropBP(model, 0.0, seq_len=48)
    predictor = MemoryModel.from_shape(dropbp.shape, lora_rank=8 if method == "lora" else 0, checkpointing=True)
    batch = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    blocks = [module for _, module in find_blocks(model)]
    for mask in ([False] * 12, [True, False] * 6, [True] * 6 + [False] * 6, [True] * 12):
        with dropbp.forced_mask(mask):
            per_block = saved_bytes_by_module(model, batch, blocks)
            total = saved_activation_bytes(model, batch)
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            with captured_block_inputs(blocks) as inputs:
                checkpointed_total = saved_activation_bytes(model, batch)
            assert checkpointed_total == saved_activation_bytes(model, batch)  # capturing changed nothing
            base.activation_checkpointing_disable()
            rerun = [rerun_saved_bytes(model, blocks[i], *inputs[i]) for i in sorted(inputs)]
        assert sum(per_block) <= total
        assert max(per_block) == pytest.approx(predictor.recompute_peak_per_token(mask) * 2 * 48, rel=0.10), mask
        # A rerun also counts what blocks share (the rotary tables, which the first block saved in the full pass).
        # The first block is left out: under checkpointing with LoRA its input requires grad, as in its real
        # recomputation, and not in the plain pass.
        assert all(b <= r <= 1.02 * b for r, b in zip(rerun[1:], per_block[1:])), (mask, rerun, per_block)
