"""File-level structure that import-linter's package contracts cannot see: no import circle between modules, the CLI
package imported only by itself and the console entries, no module over 400 lines. The checker is shown to fail on
a circle it is given."""
from __future__ import annotations

from tests.architecture import import_graph


def test_no_import_circle_between_files():
    assert import_graph.cycles(import_graph.graph()) == []


def test_only_the_cli_and_the_console_entries_import_the_cli():
    assert import_graph.cli_importers(import_graph.graph()) == []


def test_no_module_over_400_lines():
    assert import_graph.oversized() == {}


def test_the_checker_finds_circles_and_cli_imports():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "dropbp.recipes.port": {"dropbp.recipes.cli.env"}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]
    assert import_graph.cli_importers(edges) == ["dropbp.recipes.port"]


def test_the_graph_reads_relative_and_function_local_imports():
    edges = import_graph.graph()
    assert "dropbp.benchmarks.registry" in edges["dropbp.benchmarks.cli"]  # ``from .registry import ...``
    assert "dropbp.recipes.cli" in edges["dropbp.recipes.console"]          # imported inside run()
