"""Per-architecture overrides, kept as plain data: module names of the residual branches where structural discovery
(:mod:`.block_layout`) should not decide. Empty today: every decoder the tests cover is found by structure."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchOverride:
    """Module-name patterns of the two residual branches of a decoder block (either may be None: found by structure)."""

    attn: str | None = None
    mlp: str | None = None


# model_type (from the Hugging Face config) -> branch module names, for architectures structure gets wrong.
ARCH_OVERRIDES: dict[str, ArchOverride] = {}

BRANCH_KINDS: tuple[str, ...] = ("attn", "mlp")
