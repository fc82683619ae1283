"""Model presets: seeded, reproducible builds (LoRA adapters included) that leave the global RNG alone."""
from __future__ import annotations

import pytest
import torch

from dropbp.core.errors import ConfigError
from dropbp.recipes.model.build import apply_method, build_model, check_fits

SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)


def lora_state(seed: int) -> dict[str, torch.Tensor]:
    model = apply_method(build_model("tiny", seed=seed, **SMALL), "lora", seed=seed)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first, second, other = lora_state(1), lora_state(1), lora_state(2)
    assert torch.equal(before, torch.get_rng_state())
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_check_fits_refuses_a_preset_larger_than_the_device():
    check_fits("tiny", dtype=torch.float32, method="full", capacity_bytes=2**30)
    with pytest.raises(ConfigError, match="llama2-7b needs about 100.4 GiB"):
        check_fits("llama2-7b", dtype=torch.float32, method="full", capacity_bytes=24 * 2**30)
    check_fits("llama2-7b", dtype=torch.bfloat16, method="lora", capacity_bytes=80 * 2**30)  # fits one A100 80GB
