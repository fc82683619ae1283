"""The public API of ``dropbp.recipes`` (and of its training pieces, ``dropbp.recipes.training``) is explicit: every
exported name resolves, and the imports type checkers read (under ``TYPE_CHECKING``) are exactly the exported names
from the modules the lazy table loads them from."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import dropbp.recipes as recipes
import dropbp.recipes.training as training

LAZY_PACKAGES = [recipes, training]


def _type_checking_imports(package) -> dict[str, str]:
    tree = ast.parse(Path(package.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {alias.name: node.module for node in block.body for alias in node.names}


@pytest.mark.parametrize("package", LAZY_PACKAGES, ids=lambda p: p.__name__)
def test_the_typed_imports_are_the_lazy_table(package):
    assert _type_checking_imports(package) == package.EXPORTS


@pytest.mark.parametrize("package", LAZY_PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_resolves_to_its_module(package):
    for name, module in package.EXPORTS.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name)


def test_the_benchmarks_module_lists_what_it_imports():
    import dropbp.recipes.for_benchmarks as for_benchmarks

    tree = ast.parse(Path(for_benchmarks.__file__).read_text())
    imported = {alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module != "__future__"
                for alias in node.names}
    assert set(for_benchmarks.__all__) == imported


def test_every_name_the_core_exports_resolves():
    import dropbp.core as core

    assert {"DropBP", "RateAllocation", "StepFlops", "StepPolicy", "Technique"} <= set(core.__all__)
    assert all(getattr(core, name, None) is not None for name in core.__all__)
