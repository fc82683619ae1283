"""Per-architecture defaults, kept as plain data: which module names are the residual branches, and MLP shape."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchDefaults:
    """Module-name suffixes of the two residual branches of a decoder block, and whether the MLP is gated."""

    attn: str
    mlp: str
    gated_mlp: bool


# model_type (from the Hugging Face config) -> branch module names. Each entry is covered by a test on a tiny
# random config of that architecture (tests/core/test_branches.py).
ARCH_DEFAULTS: dict[str, ArchDefaults] = {
    "llama": ArchDefaults(attn="self_attn", mlp="mlp", gated_mlp=True),
    "mistral": ArchDefaults(attn="self_attn", mlp="mlp", gated_mlp=True),
    "qwen2": ArchDefaults(attn="self_attn", mlp="mlp", gated_mlp=True),
    "qwen3": ArchDefaults(attn="self_attn", mlp="mlp", gated_mlp=True),
    "gemma": ArchDefaults(attn="self_attn", mlp="mlp", gated_mlp=True),
    "gpt2": ArchDefaults(attn="attn", mlp="mlp", gated_mlp=False),
    "gpt_neox": ArchDefaults(attn="attention", mlp="mlp", gated_mlp=False),
}

BRANCH_KINDS: tuple[str, ...] = ("attn", "mlp")
