"""Branch discovery: the attention and MLP residual branches of any Hugging Face decoder, by structure or by name."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .block_layout import block_layout, find_block_list, residual_argument
from .checks import check_int
from .errors import ConfigError, NoMatchingBranchError
from .flops import ModelShape
from .module_flops import attention_score_flops_per_token, matmul_flops_per_token

Patterns = str | Sequence[str]
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.)")

BRANCH_KINDS: tuple[str, ...] = ("attn", "mlp")


@dataclass(frozen=True)
class ArchOverride:
    """Module-name patterns of the two residual branches of a decoder block (either may be None: found by structure)."""

    attn: str | None = None
    mlp: str | None = None


#: model_type (from the Hugging Face config) -> branch module names, for architectures where structural discovery
#: (:mod:`.block_layout`) should not decide. Empty today: every decoder the tests cover is found by structure.
ARCH_OVERRIDES: dict[str, ArchOverride] = {}


@dataclass(frozen=True)
class Branch:
    """One residual branch: its module name, kind ('attn' or 'mlp'), layer index, forward FLOPs per token, and the
    module it ends at when that is another one."""

    name: str
    kind: str
    layer: int
    flops: int
    end: str = ""  # where the branch ends, when not at ``name`` (a post-norm; OPT's fc2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


@dataclass
class DiscoveredBranches:
    """The result of discovery: branches in forward order, their modules, and the model shape used for FLOPs."""

    branches: list[Branch]
    parts: list["BranchParts"]
    shape: ModelShape
    model_type: str
    block_shapes: dict[int, str] = field(default_factory=dict)  # layer -> 'pre-norm', 'sandwich-norm', ...

    @property
    def modules(self) -> list[nn.Module]:
        """The module each branch starts at, in branch order."""
        return [part.first for part in self.parts]

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


@dataclass(frozen=True)
class BranchParts:
    """The modules of one branch: it starts at ``first`` and ends at ``last`` (the same module, unless the branch
    ends at a post-norm or is a chain such as OPT's ``fc1 -> fc2``); ``members`` hold its parameters.
    ``residual`` is ``(position, name)`` of the argument carrying the residual stream into a branch that adds it
    itself (BLOOM), else None."""

    first: nn.Module
    last: nn.Module
    members: tuple[nn.Module, ...]
    residual: tuple[int, str] | None = None

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the branch holds (each once)."""
        seen: dict[int, nn.Parameter] = {}
        for member in self.members:
            for param in member.parameters():
                seen.setdefault(id(param), param)
        return list(seen.values())


_Found = tuple[int, int, str, str, BranchParts, str]  # layer, kind order, kind, name, parts, end name


def _structural(model: nn.Module, mlp: bool = True) -> tuple[list[_Found], dict[int, str]]:
    """Every block's branches, found by structure (:mod:`.block_layout`; the MLP's only when ``mlp``), and each
    block's shape in words."""
    list_name, blocks = find_block_list(model)
    found: list[_Found] = []
    shapes: dict[int, str] = {}
    for layer, block in enumerate(blocks):
        layout = block_layout(block, mlp=mlp)
        shapes[layer] = layout.shape
        prefix = f"{list_name}.{layer}." if list_name else f"{layer}."
        children = dict(block.named_children())
        for span in layout.spans:
            parts = BranchParts(children[span.first], children[span.last],
                                tuple(children[m] for m in span.members), span.residual)
            end = prefix + span.last if span.last != span.first else ""
            found.append((layer, BRANCH_KINDS.index(span.kind), span.kind, prefix + span.first, parts, end))
    return found, shapes


def _by_patterns(model: nn.Module, targets: dict[str, Patterns]) -> list[_Found]:
    found: list[_Found] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(outer + ".") for outer in taken):
            continue  # keep the outermost match only
        for order, kind in enumerate(BRANCH_KINDS):
            if kind in targets and name_matches(name, targets[kind]):
                layer = layer_index(name)
                if layer is not None:
                    residual = residual_argument(module)
                    found.append((layer, order, kind, name, BranchParts(module, module, (module,), residual), ""))
                    taken.append(name)
                break
    return found


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

    By default the branches are found by structure (:mod:`.block_layout`): any Hugging Face decoder whose blocks
    hold one attention module and an MLP (or mixture of experts, or a chain of linear layers). ``attn``/``mlp``
    name the modules instead, for one kind or both (suffix names, or ``re:<regex>`` for a full match); so do the
    entries of ``ARCH_OVERRIDES``. ``layers`` keeps only those layer indices; ``exclude_layers`` removes some.
    ``seq_len`` sets the attention FLOPs. Raises :class:`NoMatchingBranchError` (repeating the patterns) when
    nothing matches.
    """
    config = _model_config(model)
    model_type = str(getattr(config, "model_type", "") or "")
    override = ARCH_OVERRIDES.get(model_type)
    targets: dict[str, Patterns] = {}
    for kind, given in (("attn", attn), ("mlp", mlp)):
        chosen = given if given is not None else getattr(override, kind, None)
        if chosen is not None:
            _validate_patterns(kind, chosen)
            targets[kind] = chosen
    shapes: dict[int, str] = {}
    found: list[_Found] = []
    if len(targets) < len(BRANCH_KINDS):
        found, shapes = _structural(model, mlp="mlp" not in targets)
        found = [f for f in found if f[2] not in targets]
    found += _by_patterns(model, targets) if targets else []
    if not found:
        raise NoMatchingBranchError(
            f"no module of this {model_type or type(model).__name__} model matched the branch patterns "
            f"attn={targets.get('attn')!r}, mlp={targets.get('mlp')!r} (a match must sit under a numbered layer such "
            "as 'layers.3.'). Check the names with [n for n, _ in model.named_modules()] and pass attn=/mlp=."
        )

    present = sorted({f[0] for f in found})
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
        mlp_parts = [f[4] for f in found if f[2] == "mlp"]
        gated_mlp = bool(mlp_parts) and _guess_gated(mlp_parts[0].first)
    shape = ModelShape.from_config(config, gated_mlp)
    branches = []
    for layer, _, kind, name, parts, end in found:
        flops = sum(matmul_flops_per_token(member, config) for member in parts.members)
        if kind == "attn":
            check_int("seq_len", seq_len, 1)
            flops += attention_score_flops_per_token(config, seq_len)
        branches.append(Branch(name, kind, layer, int(round(flops)), end))
    return DiscoveredBranches(branches, [f[4] for f in found], shape, model_type, shapes)


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder blocks (the modules that hold one layer's attention and MLP branches), as ``(name, module)`` in
    depth order."""
    found = find_branches(model)
    names: dict[int, str] = {}
    for branch in found.branches:
        marker = f".{branch.layer}."
        names.setdefault(branch.layer, branch.name[:branch.name.rindex(marker) + len(marker) - 1])
    return [(names[layer], model.get_submodule(names[layer])) for layer in sorted(names)]
