"""Forward FLOPs per token of a branch, counted from the modules it holds: any architecture, mixtures of experts and
multi-head latent attention included.

- Every matrix product counts ``2 * in * out`` per token: a linear layer (``in_features``/``out_features``, so
  4-bit and PEFT-wrapped layers count their base shape; adapters are not counted), GPT-2's ``Conv1D``, or a
  module's own 2-D weight (a router such as Mixtral's ``gate``).
- Experts stored as one 3-D weight per projection (``(experts, out, in)``), or as a list of expert modules, run
  for ``top_k`` of their ``E`` experts per token: they count ``top_k / E`` of their weights. ``top_k`` comes from
  the nearest module that names it (``top_k``, ``num_experts_per_tok``) or from the config. Shared experts and the
  router are ordinary modules and count in full.
- Attention adds its score and weighted-sum products over ``seq_len`` positions: ``2 * s * n_h * (d_qk + d_v)``,
  where latent attention's ``d_qk`` (``qk_nope_head_dim + qk_rope_head_dim``) and ``d_v`` differ.

Element-wise work (norms, activations, softmax, routing's top-k) is not counted, as in a FLOP counter of the
forward pass (``torch.utils.flop_counter.FlopCounterMode``), which the tests compare against.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

TOP_K_NAMES = ("top_k", "num_experts_per_tok", "moe_topk", "num_selected_experts")
EXPERTS_NAME = "experts"


def _config_value(config: Any, names: Iterable[str]) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def matmul_flops_per_token(module: nn.Module, config: Any = None, top_k: float | None = None) -> float:
    """Forward matrix-product FLOPs per token of ``module`` (see the module docstring)."""
    own_top_k = _config_value(module, TOP_K_NAMES)
    if isinstance(own_top_k, int) and own_top_k > 0:
        top_k = own_top_k
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(in_features, int) and isinstance(out_features, int):
        return 2.0 * in_features * out_features  # nn.Linear, bitsandbytes' Linear4bit, a PEFT LoRA layer's base
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return 2.0 * weight.numel()
    total = 0.0
    stacked = [p for p in module.parameters(recurse=False) if p.dim() == 3]
    if stacked:  # experts as 3-D weights: (experts, out, in)
        experts = stacked[0].shape[0]
        k = top_k if top_k is not None else _config_value(config, TOP_K_NAMES) or experts
        total += 2.0 * sum(p.numel() for p in stacked) * min(k, experts) / experts
    total += sum(2.0 * p.numel() for name, p in module.named_parameters(recurse=False)
                 if p.dim() == 2 and name == "weight")
    for name, child in module.named_children():
        if name == EXPERTS_NAME and isinstance(child, nn.ModuleList) and len(child):
            k = top_k if top_k is not None else _config_value(config, TOP_K_NAMES) or len(child)
            total += sum(matmul_flops_per_token(expert, config, top_k) for expert in child) * min(k, len(child)) / len(child)
        else:
            total += matmul_flops_per_token(child, config, top_k)
    return total


def attention_score_flops_per_token(config: Any, seq_len: int) -> int:
    """``2 * s * n_h * (d_qk + d_v)``: the scores and the weighted sum of one attention branch, per token."""
    heads = int(_config_value(config, ("num_attention_heads", "n_head", "num_heads")) or 0)
    hidden = int(_config_value(config, ("hidden_size", "n_embd", "d_model")) or 0)
    head_dim = _config_value(config, ("head_dim",)) or (hidden // heads if heads else 0)
    nope, rope = getattr(config, "qk_nope_head_dim", None), getattr(config, "qk_rope_head_dim", None)
    qk = nope + rope if isinstance(nope, int) and isinstance(rope, int) else head_dim
    value = _config_value(config, ("v_head_dim",)) or head_dim
    return 2 * seq_len * heads * (int(qk) + int(value))
