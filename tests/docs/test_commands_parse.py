"""The fast lane's part of the documented-commands check: every documented ``dropbp`` command (and launcher line of
``dropbp.recipes``) parses with the real parser, and every recipe one trains loads with its overrides. The slow lane
runs them (test_documented_commands.py)."""
from __future__ import annotations

import pytest

from dropbp.benchmarks.cli import register as register_bench
from dropbp.recipes.cli import parse
from dropbp.recipes.config.registry import find_recipe
from dropbp.recipes.config.schema import load_recipe

from .commands import ALL_COMMANDS, ROOT

PARSED = [c for c in ALL_COMMANDS if not c.mention
          and c.program in ("dropbp", "torchrun -m dropbp.recipes", "accelerate -m dropbp.recipes")]


def test_the_commands_are_found():
    assert len(PARSED) >= 60 and any(c.where.endswith("--help") for c in PARSED)
    assert {c.where.split(" (")[0] for c in ALL_COMMANDS} >= {"README.md", "benchmarks/README.md", "docs/DESIGN.md"}


@pytest.mark.parametrize("command", PARSED, ids=[f"{c.where}: {c.line}" for c in PARSED])
def test_every_documented_command_parses(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = parse(command.words, [register_bench])
    assert callable(args.run)
    if command.words[0] == "train":
        recipe = command.words[1]
        overrides = [w for w in command.words[2:] if "=" in w and not w.startswith("-")]
        load_recipe(find_recipe(recipe), overrides, device="cpu", for_run=False)
