"""An analytic model of training memory for a Llama-style decoder under DropBP: weights, optimizer state, and the
activations autograd saves for backward, per kept branch, so that memory can be predicted without running a step.

Saved activations per token, in elements (``h`` hidden, ``m`` MLP width, ``kv`` key/value width, ``r`` LoRA rank,
``V`` vocabulary), as autograd keeps them for a Llama decoder layer (counted with saved-tensor hooks on the CPU):

- **a dropped branch**: nothing. It runs without autograd, and the graph of the pre-norm feeding it is freed as soon
  as the branch has consumed the norm's output;
- **a kept attention branch**: full ``(h + 1) + 4h + 2kv + heads`` (the pre-norm's fp32 input and ``rsqrt``; norm
  output, q, k, v, attention output; log-sum-exp); LoRA ``3h + 2kv + heads + 4r``, plus the pre-norm's ``h + 1``
  when its input needs a gradient (after the first kept branch; nothing earlier trains);
- **a kept MLP branch**: full ``(h + 1) + 2h + 4m``; LoRA ``h + 4m + 3r``, plus the pre-norm as above;
- **the head**: full ``V + 3h + 5`` (fp32 logits, final norm, ids and labels); LoRA ``V + h + 3`` when anything is
  kept and nothing otherwise; plus the rotary tables once per sequence.

Activations are in the compute dtype (``act_bytes``), logits and norm statistics in fp32, ids in int64.

**With activation checkpointing** (non-reentrant, ``checkpointing=True``) a block keeps only its input, ``h``
per token, and only when one of its branches is kept (a block whose branches are all dropped saves nothing, so its
checkpoint holds nothing either); the head as above, under LoRA even when everything is dropped (checkpointing makes
the embeddings' output require a gradient); no rotary tables. The backward then recomputes one block at a time:
:meth:`recompute_peak_per_token` is the largest block's kept activations, held for that block's backward only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MemoryModel:
    """Shape of a decoder and how it is trained; every method returns bytes."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    lora_rank: int = 0          # 0: full fine-tuning
    act_bytes: int = 4          # bytes per activation element (4 fp32, 2 bf16/fp16)
    weight_bytes: float = 4.0   # bytes per base weight (0.5 * 1.06 for NF4 QLoRA)
    checkpointing: bool = False  # non-reentrant activation checkpointing of every block

    @classmethod
    def from_shape(cls, shape: Any, **kwargs: Any) -> "MemoryModel":
        """From a :class:`~dropbp.core.flops.ModelShape` or a mapping with hidden/intermediate/layers/heads/
        kv_heads/vocab."""
        get = shape.get if isinstance(shape, dict) else (lambda key: getattr(shape, key))
        return cls(hidden=get("hidden"), intermediate=get("intermediate"), layers=get("layers"), heads=get("heads"),
                   kv_heads=get("kv_heads"), vocab=get("vocab"), **kwargs)

    @property
    def lora(self) -> bool:
        """Whether only adapters train."""
        return self.lora_rank > 0

    @property
    def kv_width(self) -> int:
        """Width of the key (and of the value) projection."""
        return self.hidden * self.kv_heads // self.heads

    # -- weights and optimizer state ------------------------------------------------------------------------------
    def parameter_counts(self) -> tuple[int, int]:
        """(parameters in the decoder layers' linear weights, parameters in the embedding and the head)."""
        h, m, kv = self.hidden, self.intermediate, self.kv_width
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * m), 2 * self.vocab * h

    def trainable_parameters(self) -> int:
        """Every weight for full fine-tuning; the LoRA adapters (every linear layer) otherwise."""
        linear, outer = self.parameter_counts()
        if not self.lora:
            return linear + outer
        h, m, kv, r = self.hidden, self.intermediate, self.kv_width, self.lora_rank
        return self.layers * r * ((h + h) * 2 + (h + kv) * 2 + (h + m) * 3)

    def state_bytes(self, grad_bytes: int | None = None) -> float:
        """Weights, plus a gradient and two fp32 AdamW moments for each trainable parameter."""
        linear, outer = self.parameter_counts()
        weights = linear * self.weight_bytes + outer * self.act_bytes if self.lora else (linear + outer) * \
            self.weight_bytes
        grad = self.act_bytes if grad_bytes is None else grad_bytes
        return weights + self.trainable_parameters() * (grad + 8 + (self.act_bytes if self.lora else 0))

    # -- saved activations ------------------------------------------------------------------------------------------
    def _kept_attention(self) -> float:
        """A kept attention branch, without its pre-norm."""
        h, kv, r, w = self.hidden, self.kv_width, self.lora_rank, self.act_bytes
        return (3 * h + 2 * kv + 4 * r if self.lora else 4 * h + 2 * kv) * w + self.heads * 4

    def _kept_mlp(self) -> float:
        """A kept MLP branch, without its pre-norm."""
        h, m, r = self.hidden, self.intermediate, self.lora_rank
        return (h + 4 * m + 3 * r if self.lora else 2 * h + 4 * m) * self.act_bytes

    def _pre_norm(self) -> float:
        return (self.hidden + 1) * 4  # RMSNorm keeps its input upcast to fp32, and the fp32 rsqrt

    def _head(self, anything_kept: bool) -> float:
        if self.lora and not anything_kept:
            return 0.0
        logits_and_final_norm = self.vocab * 4 + self._pre_norm()
        if self.lora:
            return logits_and_final_norm + 8  # labels (int64)
        return logits_and_final_norm + 2 * self.hidden * self.act_bytes + 16  # norm output, head input, ids, labels

    def _layer_bytes(self, mask: Sequence[bool]) -> list[float]:
        """Per layer, what its kept branches save without checkpointing (pre-norms where a gradient reaches them)."""
        if len(mask) != 2 * self.layers:
            raise ValueError(f"mask needs {2 * self.layers} entries (attention and MLP per layer), got {len(mask)}.")
        layers, grad_flows = [0.0] * self.layers, not self.lora
        for index, dropped in enumerate(mask):
            if dropped:
                continue
            layers[index // 2] += (self._kept_attention() if index % 2 == 0 else self._kept_mlp()) + \
                (self._pre_norm() if grad_flows else 0.0)
            grad_flows = True
        return layers

    def saved_bytes_per_token(self, mask: Sequence[bool]) -> float:
        """Saved-activation bytes per token under ``mask`` (True = dropped; branches in forward order: each layer's
        attention, then its MLP)."""
        layers = self._layer_bytes(mask)
        if self.checkpointing:
            holding = sum(1 for layer in range(self.layers) if not all(mask[2 * layer:2 * layer + 2]))
            return holding * self.hidden * self.act_bytes + self._head(self.lora or not all(mask))
        return sum(layers) + self._head(not all(mask))

    def recompute_peak_per_token(self, mask: Sequence[bool]) -> float:
        """With checkpointing, the activations one block's recomputation holds during its backward (the largest
        block's); 0 without checkpointing, where they are already in :meth:`saved_bytes_per_token`."""
        return max(self._layer_bytes(mask)) if self.checkpointing else 0.0

    def saved_bytes(self, mask: Sequence[bool], batch: int, seq_len: int) -> float:
        """Saved-activation bytes of one forward pass of ``batch`` sequences of ``seq_len`` tokens."""
        per_token = self.saved_bytes_per_token(mask)
        rotary = 2 * seq_len * (self.hidden // self.heads) * 4 if per_token and not self.checkpointing else 0.0
        return batch * seq_len * per_token + rotary

    def saved_bytes_per_token_at(self, kept: float) -> float:
        """Per-token bytes when a share ``kept`` of each kind of branch keeps its backward (a pool sampler's every
        mask; with independent draws a step may keep everything, so size for ``kept = 1``). With checkpointing:
        every block's input (any block may keep a branch) and the head."""
        if self.lora and kept <= 0 and not self.checkpointing:
            return 0.0
        if self.checkpointing:
            return (self.layers * self.hidden * self.act_bytes if kept > 0 else 0.0) + self._head(True)
        branches = kept * self.layers * (self._kept_attention() + self._kept_mlp())
        norms = max(0.0, kept * 2 * self.layers - (1 if self.lora else 0)) * self._pre_norm()
        return branches + norms + self._head(kept > 0)

    def recompute_peak_per_token_at(self, kept: float) -> float:
        """With checkpointing, one block's recomputed activations at share ``kept`` (both branches kept: the most a
        block can hold); 0 without."""
        if not self.checkpointing or kept <= 0:
            return 0.0
        return self._kept_attention() + self._kept_mlp() + 2 * self._pre_norm()

    def training_bytes(self, batch: int, seq_len: int, kept: float = 1.0, grad_bytes: int | None = None) -> float:
        """Predicted memory of a training step: :meth:`state_bytes` plus the activations saved at share ``kept`` of
        the branches, plus with checkpointing one block's recomputation (what ``dropbp port`` sizes micro-batches
        by)."""
        per_token = self.saved_bytes_per_token_at(kept) + self.recompute_peak_per_token_at(kept)
        return self.state_bytes(grad_bytes) + batch * seq_len * per_token
