"""Model presets built in code with random weights (no download): a tiny CPU model and the paper's real shapes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.core.errors import ConfigError
from dropbp.core.seeding import seeded

# Llama-architecture shapes. 'tiny' is sized to be compute-bound on a 2-core CPU; the others are the real shapes
# of the models in the paper (random weights: timing and memory depend on shape, not on the values).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=256),
    # Paper-shaped but CPU-sized: Llama2-70B's depth (80 layers) and ratios (MLP 3.5x, grouped kv heads 1:8,
    # vocabulary 4x the width), at width 64, for memory studies where depth decides the saving.
    "deep": dict(hidden_size=64, intermediate_size=224, num_hidden_layers=80, num_attention_heads=8,
                 num_key_value_heads=1, vocab_size=256),
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
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_dtype(precision: str, backend: Any) -> torch.dtype:
    """The dtype of a precision name; ``auto`` is the backend's default (fp32 on the CPU, bf16 on accelerators)."""
    return PRECISIONS[backend.default_precision if precision == "auto" else precision]


def llama_config(preset: str, **overrides: Any) -> Any:
    """A ``LlamaConfig`` for a named preset, with optional field overrides."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ConfigError(f"model preset must be one of {', '.join(PRESETS)} (or a local path), got {preset!r}.")
    fields = {"max_position_embeddings": 8192, "attention_dropout": 0.0, **PRESETS[preset], **overrides}
    return LlamaConfig(**fields)


ENV_ALLOW_DOWNLOADS = "DROPBP_ALLOW_DOWNLOADS"


def downloads_allowed() -> bool:
    """Whether a model name that is not a local folder may be fetched from the Hugging Face Hub
    (``DROPBP_ALLOW_DOWNLOADS=1``; off by default, so a typo fails at once instead of after network retries)."""
    return os.environ.get(ENV_ALLOW_DOWNLOADS, "0").strip().lower() in ("1", "true", "yes", "on")


HUB_PREFIX = "hf:"


def hub_id(name: str) -> str | None:
    """``hf:org/name`` -> ``org/name`` (a Hugging Face Hub reference); None for anything else."""
    return name[len(HUB_PREFIX):] if isinstance(name, str) and name.startswith(HUB_PREFIX) else None


def source_of(name: str) -> str:
    """What ``from_pretrained`` is given for a model, tokenizer or dataset name: the Hub id or the local path."""
    return hub_id(name) or name


def check_hub_access(name: str, field: str) -> None:
    """A Hub reference may be used only with downloads allowed."""
    if hub_id(name) is not None and not downloads_allowed():
        raise ConfigError(f"{field} {name} is on the Hugging Face Hub, and downloads are off; set "
                          f"{ENV_ALLOW_DOWNLOADS}=1 to fetch it (or give a local copy).")


def check_model(name: Any, field: str = "--model", *, for_run: bool = True) -> None:
    """A preset, ``auto``, a local folder, or a Hub reference ``hf:org/name`` (used only with downloads allowed;
    ``for_run=False`` checks the spelling alone). Refused at once otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{field} must be a preset ({', '.join(PRESETS)}) or a folder, got {name!r}.")
    if hub_id(name) is not None:
        if not hub_id(name):
            raise ConfigError(f"{field} {name!r} names no Hub repository; write hf:org/name.")
        if for_run:
            check_hub_access(name, field)
        return
    if name in PRESETS or name == "auto" or Path(name).is_dir():
        return
    raise ConfigError(
        f"{field} must be a preset ({', '.join(PRESETS)}) or a local folder holding a Hugging Face model; {name!r} "
        f"is neither (no such folder). For a model on the Hugging Face Hub write hf:{name} and set "
        f"{ENV_ALLOW_DOWNLOADS}=1 to allow the download."
    )


def max_positions(name: str, **overrides: Any) -> int | None:
    """The longest sequence the model is configured for (``max_position_embeddings``), where it can be read
    without loading weights: a preset, or a local folder's ``config.json``; None otherwise."""
    if name in PRESETS:
        return int(llama_config(name, **overrides).max_position_embeddings)
    config = Path(name) / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            return None
        return int(value) if isinstance(value, int) else None
    return None


def check_seq_len(name: str, seq_len: int, field: str = "--seq-len", **overrides: Any) -> None:
    """``seq_len`` must not exceed the model's ``max_position_embeddings`` (where it is known)."""
    limit = max_positions(name, **overrides)
    if limit is not None and seq_len > limit:
        raise ConfigError(f"{field} must be at most {limit} for --model {name} (its max_position_embeddings), "
                          f"got {seq_len}.")


def build_model(preset_or_path: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                seed: int = 0, **overrides: Any) -> nn.Module:
    """A causal LM from a preset (random init, seeded without touching the caller's global RNG) or a local path."""
    from transformers import AutoModelForCausalLM

    if preset_or_path in PRESETS:
        config = llama_config(preset_or_path, **overrides)
        device = torch.device(device)
        with seeded(seed, device), device:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model
    check_model(preset_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(source_of(preset_or_path), dtype=dtype,
                                                    local_files_only=not downloads_allowed()).to(device)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"--model must be a preset ({', '.join(PRESETS)}) or a local folder / hub name that transformers can "
            f"load; {preset_or_path!r} could not be loaded: {str(err).splitlines()[0]}"
        ) from None


def check_fits(preset_or_path: str, *, dtype: torch.dtype, method: str, capacity_bytes: int | None,
               **overrides: Any) -> None:
    """Refuse, before allocating anything, a preset whose weights (plus gradients and AdamW moments when every
    weight trains) exceed 90% of the device's memory, instead of letting the process be killed."""
    if preset_or_path not in PRESETS or not capacity_bytes:
        return
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(llama_config(preset_or_path,
                                                                                        **overrides)).parameters())
    need = params * torch.tensor([], dtype=dtype).element_size() * (4 if method == "full" else 1)
    if need > 0.9 * capacity_bytes:
        raise ConfigError(
            f"--model {preset_or_path} needs about {need / 2**30:.1f} GiB for its weights"
            f"{' and optimizer state' if method == 'full' else ''} in {str(dtype).replace('torch.', '')}, more than "
            f"this device has ({capacity_bytes / 2**30:.1f} GiB). Choose a smaller preset (e.g. tiny), --method "
            "lora, --precision bf16, or a device with more memory."
        )


QLORA_UNAVAILABLE = ("method 'qlora' needs bitsandbytes 4-bit weights on a CUDA GPU; it cannot run on this device. "
                     "Use method 'lora' or 'full'.")


def check_method(method: Any, field: str = "--method") -> None:
    """One of :data:`METHODS` that this build can run (QLoRA is not implemented yet); refused before any work."""
    if method not in METHODS:
        raise ConfigError(f"{field} must be one of {', '.join(METHODS)}, got {method!r}.")
    if method == "qlora":
        raise ConfigError(QLORA_UNAVAILABLE)


DEFAULT_LORA_RANK = 8


def apply_method(model: nn.Module, method: str, *, lora_rank: int = DEFAULT_LORA_RANK, seed: int = 0) -> nn.Module:
    """Prepare ``model`` for ``method``: 'full' trains every weight; 'lora' wraps it with PEFT LoRA adapters,
    initialised from ``seed`` (PEFT draws them from the global generator, which is forked and restored here)."""
    if method == "full":
        return model
    if method == "lora":
        from dropbp.recipes.model_setup import add_lora, lora_config

        return add_lora(model, lora_config(lora_rank, 2 * lora_rank, 0.0, ("all-linear",), None), seed)
    if method == "qlora":
        raise ConfigError(QLORA_UNAVAILABLE)
    raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
