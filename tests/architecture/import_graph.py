"""The file-level import graph of the four layers, read with ``ast`` (every import statement, function-local ones
included), and the checks import-linter's package-level contracts cannot make: no circle between files, nothing
outside ``dropbp.recipes.cli`` (and the console entries) importing the CLI, no module over the size limit.

Run it as a script to print what it finds: ``python tests/architecture/import_graph.py`` (exit code 1 on a finding).
"""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Installed package name of each layer's folder.
LAYERS = {"dropbp_core": "dropbp.core", "backends": "dropbp.backends", "recipes": "dropbp.recipes",
          "benchmarks": "dropbp.benchmarks"}
CLI = "dropbp.recipes.cli"
#: Entry modules that start the command line (they exist to import it).
CLI_ENTRIES = ("dropbp.recipes.console", "dropbp.recipes.__main__", "dropbp.benchmarks.__main__")
MAX_LINES = 400


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the four layers by installed dotted name (a package by its own name, for ``__init__``)."""
    found: dict[str, Path] = {}
    for folder, package in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                yield f"{target}.{alias.name}"  # a submodule, or a name inside ``target``
            yield target


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``module -> modules of the four layers it imports`` (a ``from package import name`` counts as an import of
    the submodule ``package.name`` where one exists, else of ``package``)."""
    known = modules(root)
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            if imported in known and imported != name:
                targets.add(imported)
        # ``from pkg import sub`` yields both ``pkg.sub`` and ``pkg``: keep only the most specific
        edges[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def cli_importers(edges: dict[str, set[str]]) -> list[str]:
    """Modules outside the CLI package (and its console entries) that import it."""
    inside = (CLI, CLI + ".")
    return sorted(m for m, targets in edges.items()
                  if not m.startswith(inside) and m not in CLI_ENTRIES and any(t.startswith(inside) for t in targets))


def oversized(root: Path = ROOT, limit: int = MAX_LINES) -> dict[str, int]:
    """Modules longer than ``limit`` lines."""
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules(root).items()}
    return {name: size for name, size in sorted(sizes.items()) if size > limit}


def main() -> int:
    """Print every finding; 1 if there is any."""
    edges = graph()
    findings = [f"import circle: {' <-> '.join(c)}" for c in cycles(edges)]
    findings += [f"imports the CLI package: {m}" for m in cli_importers(edges)]
    findings += [f"over {MAX_LINES} lines: {m} ({n})" for m, n in oversized().items()]
    print("\n".join(findings) or f"{len(edges)} modules: no import circle, no CLI import from outside, none over "
                                 f"{MAX_LINES} lines")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
