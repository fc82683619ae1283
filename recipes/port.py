"""Porting a recipe to another cluster: the workload stays, the hardware parts are re-derived, each change has a reason.

Workload (never changed): model, data, method (unless ``allow_fallback`` says otherwise), drop rate and allocation,
optimiser, schedule, steps or epochs, seed, and the global batch ``micro_batch_size * grad_accum * ranks``. Hardware
parts (re-derived): device, cluster and nodes, the micro-batch that fits a device's memory (from the memory model
below, which counts DropBP's activation savings), the gradient accumulation that keeps the global batch, the
precision the device runs, and the sampler where every drop mask is a compiled graph.

The memory model is the core's :class:`~dropbp.core.memory_model.MemoryModel` (the one ``dropbp bench memory``
prints beside its measurements): weights (4-bit NF4 for QLoRA: 0.5 per parameter + scales), gradients and AdamW
moments of what trains (every weight for full fine-tuning; the adapters for LoRA), and per token the activations
saved for backward: each kept branch's share, each branch's pre-norm, and the head. The share kept is ``1 - drop_rate``
with the ``pool`` sampler (every mask drops its share); with ``bernoulli`` a step may keep every branch, so no
saving is counted. With ``train.gradient_checkpointing`` a block keeps only its input, plus one block's
recomputation during the backward. 15% is kept free. It is an estimate for sizing, not a measurement (``dropbp
bench memory``).

Fallbacks change the workload, so they are taken only when asked (``allow_fallback``, names separated by commas):
``lora`` moves a QLoRA recipe to hardware without 4-bit kernels as LoRA; ``checkpointing`` turns on activation
checkpointing when the recipe would not fit one device without it (otherwise the error says that it would fit).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from dropbp import backends
from dropbp.core.errors import ConfigError
from dropbp.core.memory_model import MemoryModel
from dropbp.recipes.config.clusters import ClusterProfile
from dropbp.recipes.config.presets import PRESETS, hub_id, llama_config
from dropbp.recipes.config.schema import Recipe

#: Hub models whose shape a preset gives (sizing needs the shape, not the weights).
HUB_SHAPES = {"llama-2-7b": "llama2-7b", "llama-2-13b": "llama2-13b", "llama-2-70b": "llama2-70b",
              "meta-llama-3-8b": "llama3-8b", "llama-3.1-8b": "llama3-8b"}
HEADROOM = 0.85
MAX_MICRO_BATCH = 64
FALLBACKS = ("lora", "checkpointing")


@dataclass
class Change:
    """One field the port changed, and why."""

    key: str
    before: Any
    after: Any
    reason: str


def world_size(recipe: Recipe, profile: ClusterProfile | None) -> int:
    """Ranks of a run: ranks per node times nodes (one device without a profile)."""
    if profile is None:
        return 1
    return (recipe.devices_per_node or profile.devices_per_node) * recipe.nodes


def global_batch(recipe: Recipe, profile: ClusterProfile | None) -> int:
    """Sequences per optimizer step across every rank."""
    return recipe.train.micro_batch_size * recipe.train.grad_accum * world_size(recipe, profile)


def model_shape(recipe: Recipe) -> dict[str, int] | None:
    """hidden, intermediate, layers, heads, kv heads, vocab of the recipe's model, where known without weights."""
    name = recipe.model.name
    preset = name if name in PRESETS else None
    if preset is None and hub_id(name) is not None:
        key = hub_id(name).split("/")[-1].lower()
        preset = next((p for fragment, p in HUB_SHAPES.items() if key.startswith(fragment)), None)
    if preset is None:
        return None
    config = llama_config(preset, **(recipe.model.config if name in PRESETS else {}))
    return {"hidden": config.hidden_size, "intermediate": config.intermediate_size,
            "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads, "vocab": config.vocab_size}


def memory_bytes(recipe: Recipe, shape: dict[str, int], micro_batch: int, device: str,
                 compiles_per_mask: bool = False) -> float:
    """Estimated peak memory of one rank on ``device`` (a backend name; see the module docstring)."""
    weights, autocast = backends.PRIORITY[device].precision_dtypes(recipe.train.precision)
    width = torch.finfo(weights).bits // 8
    method = recipe.model.method
    act_width = torch.finfo(autocast or weights).bits // 8
    model = MemoryModel.from_shape(shape, lora_rank=0 if method == "full" else recipe.model.lora_rank,
                                   act_bytes=act_width, weight_bytes=0.5 * 1.06 if method == "qlora" else width,
                                   checkpointing=recipe.train.gradient_checkpointing)
    sampler = recipe.dropbp.sampler
    pool = sampler == "pool" or (sampler == "auto" and compiles_per_mask)  # auto is pool where masks compile
    kept = 1.0 - recipe.dropbp.drop_rate if pool else 1.0
    return model.training_bytes(micro_batch, recipe.data.seq_len, kept, grad_bytes=width)


def _fallbacks(allow_fallback: str | None) -> set[str]:
    chosen = {name.strip() for name in (allow_fallback or "").split(",") if name.strip()}
    unknown = sorted(chosen - set(FALLBACKS))
    if unknown:
        raise ConfigError(f"--allow-fallback takes {' and/or '.join(FALLBACKS)} (comma-separated), got "
                          f"{allow_fallback!r}.")
    return chosen


def _with_checkpointing(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, gradient_checkpointing=True))


def port_recipe(recipe: Recipe, source: ClusterProfile | None, target: ClusterProfile, *, nodes: int = 1,
                allow_fallback: str | None = None) -> tuple[Recipe, list[Change]]:
    """The recipe on ``target`` (``nodes`` of it), and every change with its reason; :class:`ConfigError` with the
    reason when it cannot move."""
    if not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"--nodes must be an integer >= 1, got {nodes!r}.")
    fallbacks = _fallbacks(allow_fallback)
    changes: list[Change] = []
    model, train, dropbp = recipe.model, recipe.train, recipe.dropbp

    def change(key: str, before: Any, after: Any, reason: str) -> None:
        if before != after:
            changes.append(Change(key, before, after, reason))

    if model.method == "qlora" and not target.qlora:
        if "lora" not in fallbacks:
            raise ConfigError(f"{recipe.name} uses QLoRA (bitsandbytes 4-bit kernels), which {target.name} does not "
                              f"have; it cannot move as it is. --allow-fallback lora ports it with LoRA on bf16 "
                              f"weights instead (the change is listed).")
        model = dataclasses.replace(model, method="lora")
        change("model.method", "qlora", "lora", f"no bitsandbytes 4-bit kernels on {target.name} (--allow-fallback "
                                                "lora)")
    precision = train.precision
    if precision not in ("auto", *target.precisions):
        precision = "mixed-bf16" if "mixed-bf16" in target.precisions else "fp32"
        change("train.precision", train.precision, precision, f"{target.name} runs {', '.join(target.precisions)}")
    sampler = dropbp.sampler
    if target.compiles_per_mask and sampler == "bernoulli":
        sampler = "pool"
        change("dropbp.sampler", "bernoulli", "pool", f"every distinct mask is a compiled graph on {target.name} "
                                                      f"({target.hpu_mode} mode); pool bounds them to pool_size")
    total = global_batch(recipe, source)
    ranks = [d for d in range(target.devices_per_node, 0, -1) if total % (d * nodes) == 0]
    if not ranks:
        raise ConfigError(f"the global batch of {recipe.name} is {total} sequences, which {nodes} nodes of "
                          f"{target.name} cannot share evenly; change --nodes.")
    per_node = ranks[0]
    world = per_node * nodes
    ported = dataclasses.replace(recipe, model=model, device=target.device, cluster=target.name, nodes=nodes,
                                 devices_per_node=None if per_node == target.devices_per_node else per_node,
                                 train=dataclasses.replace(train, precision=precision),
                                 dropbp=dataclasses.replace(dropbp, sampler=sampler))
    change("device", recipe.device, target.device, f"{target.name} has {target.device} devices")
    change("cluster", recipe.cluster, target.name, "the profile the hardware parts are sized for")
    change("nodes", recipe.nodes, nodes, f"{world} ranks in all")
    change("devices_per_node", recipe.devices_per_node, ported.devices_per_node,
           f"the global batch of {total} sequences is shared evenly by {per_node} of the {target.devices_per_node} "
           f"devices per node" if per_node != target.devices_per_node else "every device of the node")
    shape = model_shape(ported)
    budget = HEADROOM * target.memory_gb * 1e9
    per_rank = total // world
    if shape is None:
        micro = min(train.micro_batch_size, per_rank)
        reason = "model shape unknown without its weights: the micro-batch is kept, not sized"
    else:
        def fitting_batches(candidate: Recipe) -> list[int]:
            return [b for b in range(1, min(per_rank, MAX_MICRO_BATCH) + 1) if per_rank % b == 0
                    and memory_bytes(candidate, shape, b, target.device, target.compiles_per_mask) <= budget]

        fitting = fitting_batches(ported)
        checkpointed = None if fitting or ported.train.gradient_checkpointing else _with_checkpointing(ported)
        if checkpointed is not None and (fitting_checkpointed := fitting_batches(checkpointed)):
            need = memory_bytes(checkpointed, shape, 1, target.device, target.compiles_per_mask) / 1e9
            if "checkpointing" not in fallbacks:
                raise ConfigError(
                    f"{recipe.name} ({ported.model.method}) does not fit one {target.name} device as it is, but would "
                    f"with activation checkpointing (about {need:.1f} GB at micro-batch 1 against "
                    f"{target.memory_gb:g} GB): --allow-fallback checkpointing ports it so (about one more forward "
                    "per step; the change is listed), or set train.gradient_checkpointing=true yourself.")
            ported, fitting = checkpointed, fitting_checkpointed
            change("train.gradient_checkpointing", False, True, f"the recipe does not fit one {target.name} device "
                                                                "without it (--allow-fallback checkpointing)")
        if not fitting:
            need = memory_bytes(ported, shape, 1, target.device, target.compiles_per_mask) / 1e9
            raise ConfigError(f"{recipe.name} ({ported.model.method}) does not fit one {target.name} device: about "
                              f"{need:.0f} GB at micro-batch 1 against {target.memory_gb:g} GB, and port sizes "
                              "data-parallel runs (every rank holds the whole model). Use a smaller model or method, "
                              "a shorter data.seq_len, or a device with more memory.")
        micro = max(fitting)
        estimate = memory_bytes(ported, shape, micro, target.device, target.compiles_per_mask) / 1e9
        reason = (f"largest that fits {target.memory_gb:g} GB (estimated {estimate:.2f} GB with "
                  f"{HEADROOM:.0%} usable) and divides the {per_rank} sequences per rank")
    accum = per_rank // micro
    ported = dataclasses.replace(ported, train=dataclasses.replace(ported.train, micro_batch_size=micro,
                                                                   grad_accum=accum))
    change("train.micro_batch_size", train.micro_batch_size, micro, reason)
    change("train.grad_accum", train.grad_accum, accum, f"keeps the global batch of {total} = {micro} x {accum} x "
                                                        f"{world} ranks")
    return ported, changes
