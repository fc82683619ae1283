"""Branch discovery: find the attention and MLP residual branches of any Hugging Face decoder by module name."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .arch_defaults import ARCH_DEFAULTS, BRANCH_KINDS
from .errors import ConfigError, NoMatchingBranchError
from .flops import ModelShape, branch_flops_per_token

Patterns = str | Sequence[str]
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.)")


@dataclass(frozen=True)
class Branch:
    """One residual branch: its module name, kind ('attn' or 'mlp'), layer index and forward FLOPs per token."""

    name: str
    kind: str
    layer: int
    flops: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


@dataclass
class DiscoveredBranches:
    """The result of discovery: branches in forward order, their modules, and the model shape used for FLOPs."""

    branches: list[Branch]
    modules: list[nn.Module]
    shape: ModelShape
    model_type: str

    @property
    def flops(self) -> list[int]:
        """Per-branch forward FLOPs per token, in branch order."""
        return [b.flops for b in self.branches]


def _as_list(patterns: Patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def name_matches(name: str, patterns: Patterns) -> bool:
    """True when a module name matches one pattern: ``re:<regex>`` full-matches the whole name; any other string
    matches the last name components (``mlp`` matches ``model.layers.3.mlp``)."""
    for pattern in _as_list(patterns):
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a module name (``model.layers.3.mlp`` -> 3), or None."""
    found = _LAYER_INDEX.findall(name)
    return int(found[-1]) if found else None


def _model_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError(
            f"model of type {type(model).__name__} has no 'config' attribute; dropbp needs a Hugging Face "
            "model (a PreTrainedModel or a PEFT model wrapping one)."
        )
    return config


def _validate_patterns(label: str, patterns: Patterns) -> None:
    for pattern in _as_list(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{label} must be a module name or 're:<regex>' string (or a list of them), got {pattern!r}.")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise ConfigError(f"{label} pattern {pattern!r} is not a valid regular expression: {err}.") from None


def _guess_gated(module: nn.Module) -> bool:
    return any("gate" in child_name for child_name, _ in module.named_children())


def find_branches(
    model: nn.Module,
    *,
    attn: Patterns | None = None,
    mlp: Patterns | None = None,
    layers: Iterable[int] | None = None,
    exclude_layers: Iterable[int] | None = None,
    seq_len: int = 2048,
    gated_mlp: bool | None = None,
) -> DiscoveredBranches:
    """Find the residual branches of ``model`` without changing it.

    ``attn``/``mlp`` override the per-architecture module names (suffix names, or ``re:<regex>`` for a full match).
    ``layers`` keeps only those layer indices; ``exclude_layers`` removes some. ``seq_len`` sets the attention FLOPs.
    Raises :class:`NoMatchingBranchError` (repeating the patterns) when nothing matches.
    """
    config = _model_config(model)
    model_type = str(getattr(config, "model_type", "") or "")
    defaults = ARCH_DEFAULTS.get(model_type)
    if defaults is None and (attn is None or mlp is None):
        raise NoMatchingBranchError(
            f"no default branch names for model_type {model_type!r}; known architectures: "
            f"{', '.join(sorted(ARCH_DEFAULTS))}. Pass the attention and MLP module names yourself, e.g. "
            "attn='self_attn', mlp='mlp' (or 're:<regex>' patterns)."
        )
    targets = {"attn": attn if attn is not None else defaults.attn, "mlp": mlp if mlp is not None else defaults.mlp}
    for kind, patterns in targets.items():
        _validate_patterns(kind, patterns)

    found: list[tuple[int, int, str, str, nn.Module]] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(outer + ".") for outer in taken):
            continue  # keep the outermost match only
        for order, kind in enumerate(BRANCH_KINDS):
            if name_matches(name, targets[kind]):
                layer = layer_index(name)
                if layer is not None:
                    found.append((layer, order, kind, name, module))
                    taken.append(name)
                break
    if not found:
        raise NoMatchingBranchError(
            f"no module of this {model_type or type(model).__name__} model matched the branch patterns "
            f"attn={targets['attn']!r}, mlp={targets['mlp']!r} (a match must sit under a numbered layer such as "
            "'layers.3.'). Check the names with [n for n, _ in model.named_modules()] and pass attn=/mlp=."
        )

    present = sorted({layer for layer, *_ in found})
    keep = set(present)
    for label, chosen in (("layers", layers), ("exclude_layers", exclude_layers)):
        if chosen is None:
            continue
        chosen = set(chosen)
        unknown = sorted(chosen - set(present))
        if unknown:
            raise ConfigError(f"{label} names layers {unknown} that do not exist; allowed: {present[0]}..{present[-1]}.")
        keep = keep & chosen if label == "layers" else keep - chosen
    found = sorted((f for f in found if f[0] in keep), key=lambda f: (f[0], f[1]))
    if not found:
        raise NoMatchingBranchError(f"layers={layers!r} and exclude_layers={exclude_layers!r} leave no branch to drop.")

    if gated_mlp is None:
        if defaults is not None:
            gated_mlp = defaults.gated_mlp
        else:
            mlp_modules = [module for _, _, kind, _, module in found if kind == "mlp"]
            gated_mlp = bool(mlp_modules) and _guess_gated(mlp_modules[0])
    shape = ModelShape.from_config(config, gated_mlp)
    branches = [Branch(name, kind, layer, branch_flops_per_token(kind, shape, seq_len)) for layer, _, kind, name, _ in found]
    return DiscoveredBranches(branches, [f[4] for f in found], shape, model_type)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder blocks (the modules that hold one layer's attention and MLP branches), as ``(name, module)`` in
    depth order."""
    found = find_branches(model)
    names: dict[int, str] = {}
    for branch in found.branches:
        marker = f".{branch.layer}."
        names.setdefault(branch.layer, branch.name[:branch.name.rindex(marker) + len(marker) - 1])
    return [(names[layer], model.get_submodule(names[layer])) for layer in sorted(names)]
