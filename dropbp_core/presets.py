"""Model presets built in code with random weights (no download): a tiny CPU model and the paper's real shapes."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError

# Llama-architecture shapes. 'tiny' is sized to be compute-bound on a 2-core CPU; the others are the real shapes
# of the models in the paper (random weights: timing and memory depend on shape, not on the values).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=256),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=32000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}
METHODS: tuple[str, ...] = ("full", "lora", "qlora")


def llama_config(preset: str, **overrides: Any) -> Any:
    """A ``LlamaConfig`` for a named preset, with optional field overrides."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ConfigError(f"model preset must be one of {', '.join(PRESETS)} (or a local path), got {preset!r}.")
    fields = {"max_position_embeddings": 8192, "attention_dropout": 0.0, **PRESETS[preset], **overrides}
    return LlamaConfig(**fields)


def build_model(preset_or_path: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                seed: int = 0, **overrides: Any) -> nn.Module:
    """A causal LM from a preset (random init, seeded without touching the caller's global RNG) or a local path."""
    from transformers import AutoModelForCausalLM

    if preset_or_path in PRESETS:
        config = llama_config(preset_or_path, **overrides)
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model
    return AutoModelForCausalLM.from_pretrained(preset_or_path, dtype=dtype).to(device)


def apply_method(model: nn.Module, method: str, *, lora_rank: int = 8) -> nn.Module:
    """Prepare ``model`` for ``method``: 'full' trains every weight; 'lora' wraps it with PEFT LoRA adapters."""
    if method == "full":
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules="all-linear")
        return get_peft_model(model, config)
    if method == "qlora":
        raise ConfigError(
            "method 'qlora' needs bitsandbytes 4-bit weights on a CUDA GPU; it cannot run on this device. "
            "Use method 'lora' or 'full'."
        )
    raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
