"""Forward FLOPs per token of each residual branch, from a model's shape (GQA, gated MLP and sequence length)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .checks import check_int
from .errors import ConfigError


def _first(config: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class ModelShape:
    """The sizes the FLOPs model needs: hidden h, heads n_h, kv heads n_kv, head dim d, MLP width m, layers L."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    gated_mlp: bool
    vocab: int = 0

    @classmethod
    def from_config(cls, config: Any, gated_mlp: bool) -> "ModelShape":
        """Read the shape from a Hugging Face config (Llama-style or GPT-2-style attribute names)."""
        hidden = _first(config, ("hidden_size", "n_embd", "d_model"))
        heads = _first(config, ("num_attention_heads", "n_head"))
        layers = _first(config, ("num_hidden_layers", "n_layer"), 0)
        if not hidden or not heads:
            raise ConfigError(
                f"cannot read the model shape from config of type {type(config).__name__}: it needs "
                "'hidden_size' (or 'n_embd') and 'num_attention_heads' (or 'n_head')."
            )
        kv_heads = _first(config, ("num_key_value_heads",), heads)
        head_dim = _first(config, ("head_dim",), hidden // heads)
        intermediate = _first(config, ("intermediate_size", "n_inner"), 4 * hidden)
        vocab = _first(config, ("vocab_size",), 0)
        return cls(int(hidden), int(heads), int(kv_heads), int(head_dim), int(intermediate), int(layers),
                   bool(gated_mlp), int(vocab))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the shape."""
        return asdict(self)


def attention_flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Forward FLOPs per token of one attention branch.

    ``2*h*(n_h*d)`` (Q) + ``2*2*h*(n_kv*d)`` (K and V, smaller under GQA) + ``2*(n_h*d)*h`` (output projection)
    + ``2*2*s*n_h*d`` (scores and weighted sum over ``s`` positions).
    """
    check_int("seq_len", seq_len, 1)
    h, nh, nkv, d = shape.hidden, shape.heads, shape.kv_heads, shape.head_dim
    return 2 * h * (nh * d) + 2 * 2 * h * (nkv * d) + 2 * (nh * d) * h + 2 * 2 * seq_len * nh * d


def mlp_flops_per_token(shape: ModelShape) -> int:
    """Forward FLOPs per token of one MLP branch: ``3*2*h*m`` when gated (SwiGLU/GeGLU), else ``2*2*h*m``."""
    matrices = 3 if shape.gated_mlp else 2
    return matrices * 2 * shape.hidden * shape.intermediate


def branch_flops_per_token(kind: str, shape: ModelShape, seq_len: int) -> int:
    """Forward FLOPs per token of a branch of the given kind ('attn' or 'mlp')."""
    if kind == "attn":
        return attention_flops_per_token(shape, seq_len)
    if kind == "mlp":
        return mlp_flops_per_token(shape)
    raise ConfigError(f"unknown branch kind {kind!r}; allowed: 'attn', 'mlp'.")
