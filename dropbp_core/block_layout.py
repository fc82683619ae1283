"""Structural branch discovery: the decoder's block list and, inside each block, its attention and MLP branches,
found by what the modules are and how the block's ``forward`` calls them, not by a list of ``model_type`` names.

- **Blocks**: the longest ``nn.ModuleList`` whose every item holds exactly one attention child (a class whose
  name says ``Attention``/``Attn``).
- **Attention branch**: that child. **MLP branch**: the one child whose class says ``MLP``, ``FeedForward``,
  ``FFN``, ``MoE`` or ``Experts`` (a mixture of experts, router and shared experts included); where the MLP is not
  one module (OPT: ``fc1 -> activation -> fc2`` directly in the block), the branch runs from the first to the last
  of the block's other parameter-holding children in call order.
- **Post-norms** (OLMo 2's post-norm, Gemma 2/3's sandwich): a norm the block's ``forward`` applies directly to a
  branch's output belongs to that branch, which then ends at the norm. The block's ``forward`` is read (its source,
  with ``ast``; nothing runs) to see which value each ``self.<child>(...)`` call receives.
- **Residual inside the branch** (BLOOM: the attention and the MLP add their ``residual`` argument themselves): the
  branch's output then carries the residual stream, and a dropped branch must still pass the stream's gradient;
  the engine ties it back (see :class:`BranchSpan`).

What a dropped branch means for each block shape (the semantics of the architecture notes, kept everywhere):
pre-norm (``x + f(norm(x))``): ``f`` and its pre-norm get no gradient, the stream passes. Post-norm and sandwich
(``x + post(f(pre(x)))``): the same, with ``post`` inside the branch (no gradient, no saved activations).
Parallel (``x + attn(norm(x)) + mlp(norm(x))``): dropping one branch leaves the other's path, so a shared norm
still gets the kept branch's gradient. Residual inside: the module's own output gets no gradient; its residual
input gets exactly the stream's.
"""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from torch import nn

from .errors import NoMatchingBranchError

ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
MLP_CLASS = re.compile(r"mlp|feed_?forward|ffn|moe|experts", re.IGNORECASE)
NORM_CLASS = re.compile(r"norm", re.IGNORECASE)
RESIDUAL_ARGUMENT = "residual"


@dataclass(frozen=True)
class BranchSpan:
    """One branch inside a block, by child names: it starts at ``first`` (whose forward pre-hook turns gradients
    off when dropped) and ends at ``last`` (whose forward hook turns them on again and detaches the output);
    ``members`` are the children it spans, in call order. ``residual`` is ``(position, name)`` of the argument
    that carries the residual stream into a branch that adds it itself, else None."""

    kind: str
    first: str
    last: str
    members: tuple[str, ...]
    residual: tuple[int, str] | None = None


@dataclass(frozen=True)
class BlockLayout:
    """The branches of one block, attention first, and the block's shape in words (for reports)."""

    spans: tuple[BranchSpan, ...]
    shape: str


@dataclass
class _Call:
    child: str
    source: str | None  # the child whose output this call receives directly, if any
    depends: frozenset[str] = frozenset()  # every child whose output flows into this call's input


def _class_name(module: nn.Module) -> str:
    return type(module).__name__


def _is_norm(module: nn.Module) -> bool:
    return bool(NORM_CLASS.search(_class_name(module))) and not any(True for _ in module.children())


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's block list, as ``(name, ModuleList)``: the longest list whose every item holds exactly one
    attention child. Raises :class:`NoMatchingBranchError` when there is none."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if all(len(attention_children(item)) == 1 for item in module):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise NoMatchingBranchError(
            f"found no decoder blocks in this {_class_name(model)}: no module list whose every item holds exactly one "
            "attention module (a child whose class name says Attention). Pass the branch module names yourself, "
            "e.g. attn='self_attn', mlp='mlp' (or 're:<regex>' patterns).")
    return best


def attention_children(block: nn.Module) -> list[str]:
    """Names of the block's children whose class says attention (norms excluded)."""
    return [name for name, child in block.named_children()
            if ATTENTION_CLASS.search(_class_name(child)) and not NORM_CLASS.search(_class_name(child))]


def _self_call(node: ast.AST) -> ast.Call | None:
    """The ``self.<child>(...)`` call in ``node`` (also under ``[0]``), or None."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"):
        return node
    return None


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements in source order, descending into ``if``/``with``/``for``/``try`` bodies (both sides of a branch)."""
    for statement in body:
        yield statement
        for field in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(statement, field, []) or [])
        for handler in getattr(statement, "handlers", []) or []:
            yield from _statements(handler.body)


def read_calls(block: nn.Module) -> list[_Call] | None:
    """The ``self.<child>(...)`` calls of the block's ``forward`` in source order, each with the child whose output it
    receives directly as its first argument (through dropout children), or None when the source cannot be read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(block).forward)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    children = dict(block.named_children())
    function = tree.body[0]
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    producer: dict[str, str | None] = {}
    depends: dict[str, frozenset[str]] = {}
    calls: list[_Call] = []

    def first_input(call: ast.Call) -> ast.AST | None:
        if call.args:
            return call.args[0]
        named = {keyword.arg: keyword.value for keyword in call.keywords if keyword.arg}
        return named.get("hidden_states", next(iter(named.values()), None))

    def flows(expr: ast.AST | None) -> frozenset[str]:
        if expr is None:
            return frozenset()
        found: set[str] = set()
        for node in ast.walk(expr):
            if isinstance(node, ast.Name):
                found |= depends.get(node.id, frozenset())
            call = _self_call(node)
            if call is not None and call is node and call.func.attr in children:
                found.add(call.func.attr)
        return frozenset(found)

    def source_of(expr: ast.AST | None) -> str | None:
        if isinstance(expr, ast.Name):
            return producer.get(expr.id)
        call = _self_call(expr) if expr is not None else None
        if call is not None and call.func.attr in children:
            return produced_by(call)
        return None

    def produced_by(call: ast.Call) -> str | None:
        child = children[call.func.attr]
        if isinstance(child, nn.Dropout):  # dropout passes its input's producer through
            return source_of(first_input(call))
        return call.func.attr

    def visit_calls(expr: ast.AST) -> None:
        for node in ast.iter_child_nodes(expr):
            visit_calls(node)
        call = _self_call(expr)
        if call is not None and call is expr and call.func.attr in children:
            calls.append(_Call(call.func.attr, source_of(first_input(call)), flows(first_input(call))))

    for statement in _statements(function.body):
        if isinstance(statement, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
            visit_calls(getattr(statement, "test", None) or ast.Pass())
            continue
        visit_calls(statement)
        if isinstance(statement, ast.Assign):
            call = _self_call(statement.value)
            made = produced_by(call) if call is not None and call.func.attr in children else None
            flow = flows(statement.value)
            for target in statement.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                for position, name in enumerate(names):
                    if isinstance(name, ast.Name):
                        producer[name.id] = made if position == 0 else None
                        depends[name.id] = flow
    return calls


def residual_argument(module: nn.Module) -> tuple[int, str] | None:
    """``(position, name)`` of the module's ``residual`` argument (a branch that adds the stream itself), or None."""
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return (names.index(RESIDUAL_ARGUMENT), RESIDUAL_ARGUMENT) if RESIDUAL_ARGUMENT in names else None


def block_layout(block: nn.Module, *, mlp: bool = True) -> BlockLayout:
    """The attention and (unless ``mlp`` is False: named by the caller) MLP branches of one decoder block, attention
    first (see the module docstring); raises :class:`NoMatchingBranchError` naming what is missing or ambiguous."""
    children = dict(block.named_children())
    calls = read_calls(block)
    order = {}
    for position, call in enumerate(calls or []):
        order.setdefault(call.child, position)
    registered = list(children)
    rank = (lambda name: order.get(name, len(order) + registered.index(name))) if calls else registered.index
    attention = attention_children(block)
    if len(attention) != 1:
        raise NoMatchingBranchError(f"block {_class_name(block)} has {len(attention)} attention modules "
                                    f"({', '.join(attention) or 'none'}); pass attn= and mlp= to say which to use.")
    mlps = [name for name, child in children.items()
            if name not in attention and MLP_CLASS.search(_class_name(child)) and not _is_norm(child)]
    if not mlp:
        mlps = mlps[:1] or attention  # a placeholder span, not reported
    if len(mlps) > 1:
        raise NoMatchingBranchError(f"block {_class_name(block)} has {len(mlps)} MLP-like modules ({', '.join(mlps)}); "
                                    "pass attn= and mlp= to say which to use.")
    if mlps:
        mlp_first = mlp_last = mlps[0]
    else:  # the MLP is not one module: from the first to the last other parameter-holding child in call order
        rest = sorted((name for name, child in children.items() if name not in attention and not _is_norm(child)
                       and _has_parameters(child)), key=rank)
        if not rest:
            raise NoMatchingBranchError(f"block {_class_name(block)} holds no MLP (children: {', '.join(registered)}); "
                                        "pass attn= and mlp= to say which modules are the branches.")
        mlp_first, mlp_last = rest[0], rest[-1]
    spans, post_norms = [], 0
    for kind, first, last in (("attn", attention[0], attention[0]), ("mlp", mlp_first, mlp_last))[:2 if mlp else 1]:
        residual = residual_argument(children[first]) if first == last else None
        if residual is None and calls:
            post = [c.child for c in calls if c.source == last and _is_norm(children[c.child])]
            if post:
                last, post_norms = post[0], post_norms + 1
        members = tuple(sorted((name for name in registered if rank(first) <= rank(name) <= rank(last)), key=rank))
        spans.append(BranchSpan(kind, first, last, members or (first,), residual))
    pre_norms = [c.child for c in calls or [] if _is_norm(children[c.child]) and c.child not in
                 {s.last for s in spans}]
    shape = ("residual inside the branches" if any(s.residual for s in spans) else
             "sandwich-norm" if post_norms and pre_norms else "post-norm" if post_norms else
             "parallel" if _parallel(calls, spans) else "pre-norm")
    return BlockLayout(tuple(spans), shape)


def _parallel(calls: list[_Call] | None, spans: list[BranchSpan]) -> bool:
    """Whether the MLP's input (at its first call in the source) does not depend on the attention's output (GPT-J,
    Phi, Cohere: ``x + attn(norm(x)) + mlp(norm(x))``). Blocks that choose at run time (GPT-NeoX, Falcon) are
    read as their first written form."""
    mlp = next((c for c in calls or [] if len(spans) > 1 and c.child == spans[1].first), None)
    return mlp is not None and spans[0].last not in mlp.depends and spans[0].first not in mlp.depends

