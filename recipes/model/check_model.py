"""``dropbp check``'s work: the branches DropBP finds on a model (at full depth, on the meta device: no memory, no
weights), and whether DropBP is exact there (a reduced-depth copy with random weights, full and LoRA, against the
detach reference of :mod:`dropbp.core.exactness`)."""
from __future__ import annotations

import copy
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dropbp.core.branches import DiscoveredBranches, find_branches
from dropbp.core.errors import ConfigError, NoMatchingBranchError
from dropbp.core.exactness import MaskCheck, check_masks
from dropbp.core.seeding import seeded
from dropbp.recipes.config.presets import PRESETS, check_model, downloads_allowed, llama_config, source_of

#: Largest vocabulary of the reduced copy: the embedding and head are outside every branch, so their size changes
#: nothing that is checked, and a 256k vocabulary would dominate the time and memory.
CHECK_VOCAB = 4096
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")


@dataclass
class ModelCheck:
    """What ``dropbp check`` found: the branch table at full depth, and each exactness check's result."""

    name: str
    architecture: str
    model_type: str
    blocks: int
    found: DiscoveredBranches | None
    refused: str = ""
    outside: list[str] = field(default_factory=list)
    layers_checked: int = 0
    results: dict[str, list[MaskCheck]] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """Found, and every check exact."""
        return not self.refused and bool(self.results) and all(c.exact for r in self.results.values() for c in r)


def load_config(name: str) -> Any:
    """The config of a preset, a local folder, or ``hf:org/name`` (downloads allowed); ConfigError otherwise."""
    check_model(name, "MODEL")
    if name in PRESETS:
        return llama_config(name)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source_of(name), local_files_only=not downloads_allowed())
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"MODEL {name!r} has no config that transformers can read: {str(err).splitlines()[0]}") from None


def _layers(config: Any) -> tuple[str, int]:
    for name in LAYER_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return name, value
    raise ConfigError(f"the config ({type(config).__name__}) names no layer count ({', '.join(LAYER_FIELDS)}).")


def reduced_config(config: Any, layers: int) -> Any:
    """A copy of ``config`` with ``layers`` blocks (more where the first blocks differ from the rest: DeepSeek's
    dense ones), a vocabulary of at most :data:`CHECK_VOCAB`, dropout off and eager attention and experts."""
    config = copy.deepcopy(config)
    field_name, depth = _layers(config)
    dense_first = getattr(config, "first_k_dense_replace", None)
    layers = min(depth, max(layers, (dense_first or 0) + 1))
    setattr(config, field_name, layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    if getattr(config, "vocab_size", 0) > CHECK_VOCAB:
        config.vocab_size = CHECK_VOCAB
        for token in TOKEN_FIELDS:
            if isinstance(getattr(config, token, None), int) and getattr(config, token) >= CHECK_VOCAB:
                setattr(config, token, CHECK_VOCAB - 1)
    for name, value in vars(config).items():
        if isinstance(value, float) and ("dropout" in name or "pdrop" in name or "jitter" in name):
            setattr(config, name, 0.0)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def _random_model(config: Any, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    from transformers import AutoModelForCausalLM

    with seeded(seed, torch.device(device)), torch.device(device):
        return AutoModelForCausalLM.from_config(config)


def _masks(branches: int, seed: int) -> list[list[bool]]:
    """Three masks: a random one, its complement, and every branch dropped (the no-trainable-path case)."""
    rng = random.Random(seed)
    first = [rng.random() < 0.5 for _ in range(branches)]
    first[rng.randrange(branches)] = True
    return [first, [not m for m in first] if not all(first) else [False] * branches, [True] * branches]


def _outside(model: nn.Module, found: DiscoveredBranches) -> list[str]:
    """Modules with parameters outside every branch: the first block's children, then those outside the blocks."""
    names = {id(m): n for n, m in model.named_modules()}
    inside = {id(m) for part in found.parts for m in part.members}
    block = names[id(found.parts[0].first)].rsplit(".", 1)[0]
    blocks = block.rsplit(".", 1)[0] + "."
    children = [f"{name} (each block)" for name, child in model.get_submodule(block).named_children()
                if id(child) not in inside and any(True for _ in child.parameters())]
    rest = [name for name, module in model.named_modules() if name and not name.startswith(blocks)
            and any(True for _ in module.parameters(recurse=False))]
    return children + rest


def check(name: str, *, layers: int = 2, seq_len: int = 16, methods: tuple[str, ...] = ("full", "lora"),
          seed: int = 0, **names: Any) -> ModelCheck:
    """List the branches of model ``name`` at full depth, then run three masks on a ``layers``-deep random copy for
    each method and compare every gradient with the detach reference."""
    from transformers import AutoModelForCausalLM

    from .build import apply_method

    config = load_config(name)
    with torch.device("meta"):
        full = AutoModelForCausalLM.from_config(config)
    result = ModelCheck(name, type(full).__name__, str(getattr(config, "model_type", "")), _layers(config)[1], None)
    try:
        result.found = find_branches(full, seq_len=seq_len, **names)
    except NoMatchingBranchError as err:
        result.refused = str(err)
        return result
    result.outside = _outside(full, result.found)
    small = reduced_config(config, layers)
    result.layers_checked = _layers(small)[1]
    batch = torch.randint(3, min(small.vocab_size, CHECK_VOCAB), (2, seq_len),
                          generator=torch.Generator().manual_seed(seed))
    base = _random_model(small, seed)
    for method in methods:
        model = base if method == methods[-1] else copy.deepcopy(base)  # a copy is faster than a second init
        if method == "lora":
            model = apply_method(model, "lora", seed=seed)
            with seeded(seed):  # B starts at zero in PEFT: non-zero, so that every adapter gets a gradient
                for param_name, param in model.named_parameters():
                    if "lora_B" in param_name:
                        nn.init.normal_(param, std=0.02)
        model.train()
        branches = len(find_branches(model, **names).branches)
        result.results[method] = check_masks(model, _masks(branches, seed), batch, **names)
        del model
    del base
    return result


def branch_rows(found: DiscoveredBranches) -> list[tuple[str, str, str, str, str]]:
    """One row per distinct branch (kind, module, where it ends, class): how many, in which layers, FLOPs share."""
    total = sum(found.flops) or 1
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    flops: dict[tuple[str, str, str], int] = defaultdict(int)
    for branch, part in zip(found.branches, found.parts):
        key = (branch.kind, branch.name.rsplit(".", 1)[-1] + (f" -> {branch.end.rsplit('.', 1)[-1]}" if branch.end
                                                              else ""), type(part.first).__name__)
        groups[key].append(branch.layer)
        flops[key] += branch.flops
    rows = []
    for (kind, module, cls), layers in groups.items():
        span = f"layers {layers[0]}..{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
        rows.append((kind, module, cls, f"{len(layers)} ({span})", f"{100 * flops[(kind, module, cls)] / total:.1f}%"))
    return rows
