"""Branch discovery on tiny random models of each supported architecture, overrides, errors and the FLOPs model."""
from __future__ import annotations

import pytest
import torch

from dropbp.core import DropBP, find_branches
from dropbp.core.errors import ConfigError, NoMatchingBranchError
from dropbp.core.flops import ModelShape, attention_flops_per_token, mlp_flops_per_token

from ..conftest import ARCHS, tiny_model


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


#: The branch module names the (former) hand-kept table gave; structural discovery must find the same ones.
NAMES = {"gpt2": ("attn", "mlp"), "gpt_neox": ("attention", "mlp")}


@pytest.mark.parametrize("arch", ARCHS)
def test_default_branches_per_architecture(arch):
    model = tiny_model(arch, layers=3)
    found = find_branches(model)
    names = NAMES.get(arch, ("self_attn", "mlp"))
    assert [(b.layer, b.kind) for b in found.branches] == [(l, k) for l in range(3) for k in ("attn", "mlp")]
    for branch in found.branches:
        assert branch.name.endswith("." + names[branch.kind == "mlp"]) and branch.flops > 0 and branch.end == ""
    assert found.model_type == arch and found.shape.gated_mlp == (arch not in NAMES)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_lora_model_is_found_through_the_wrapper(arch):
    found = find_branches(tiny_model(arch, "lora"))
    assert len(found.branches) == 4 and all(b.name.startswith("base_model.model.") for b in found.branches)


def test_overrides_by_name_regex_and_layers():
    model = tiny_model("llama", layers=3)
    found = find_branches(model, attn=r"re:.*layers\.0\.self_attn", mlp="mlp")
    assert [(b.layer, b.kind) for b in found.branches] == [(0, "attn"), (0, "mlp"), (1, "mlp"), (2, "mlp")]
    assert [b.layer for b in find_branches(model, layers=[1]).branches] == [1, 1]
    assert [b.layer for b in find_branches(model, exclude_layers=[0, 2]).branches] == [1, 1]
    with pytest.raises(ConfigError, match=r"layers names layers \[7\] that do not exist; allowed: 0..2"):
        find_branches(model, layers=[7])


def test_no_match_repeats_patterns_and_leaves_model_untouched():
    model = tiny_model("llama")
    with pytest.raises(NoMatchingBranchError, match="attn='attention_block', mlp=\\['ffn', 're:.*ff'\\]"):
        DropBP(model, 0.5, attn="attention_block", mlp=["ffn", "re:.*ff"])
    assert hook_count(model) == 0


def test_unknown_architecture_is_found_by_structure_and_a_model_without_blocks_asks_for_names():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    assert [b.name for b in find_branches(model).branches] == [b.name for b in find_branches(tiny_model()).branches]
    flat = torch.nn.Sequential(torch.nn.Linear(4, 4))
    flat.config = model.config
    with pytest.raises(NoMatchingBranchError, match="found no decoder blocks .*attn='self_attn', mlp='mlp'"):
        find_branches(flat)
    assert len(find_branches(model, attn="self_attn", mlp="mlp").branches) == 4


def test_flops_model_gqa_swiglu_and_sequence_length():
    # h=32, heads 4, kv heads 2, head dim 8, m=64, s=16 (hand-computed)
    shape = ModelShape(hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=64, layers=2, gated_mlp=True)
    assert attention_flops_per_token(shape, 16) == 2 * 32 * 32 + 4 * 32 * 16 + 2 * 32 * 32 + 4 * 16 * 32
    assert mlp_flops_per_token(shape) == 3 * 2 * 32 * 64
    mha = ModelShape(32, 4, 4, 8, 64, 2, True)
    assert attention_flops_per_token(mha, 16) - attention_flops_per_token(shape, 16) == 4 * 32 * 16
    assert attention_flops_per_token(shape, 32) - attention_flops_per_token(shape, 16) == 4 * 16 * 32
    assert mlp_flops_per_token(ModelShape(32, 4, 4, 8, 128, 2, False)) == 2 * 2 * 32 * 128
    found = find_branches(tiny_model("llama"), seq_len=16)
    assert found.flops[:2] == [attention_flops_per_token(shape, 16), mlp_flops_per_token(shape)]
    gpt2 = find_branches(tiny_model("gpt2"), seq_len=16)
    assert gpt2.shape.intermediate == 4 * 32 and not gpt2.shape.gated_mlp
