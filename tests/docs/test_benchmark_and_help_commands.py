"""Every command benchmarks/README.md shows, and every example of every ``--help``, runs (or its cheap variant, or it
is parsed with its reason for not running here): the same checks as test_documented_commands.py."""
from __future__ import annotations

import pytest

from .commands import ALL_COMMANDS
from .runner import check_command

COMMANDS = [c for c in ALL_COMMANDS if not c.where.startswith(("README.md", "docs/"))]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}: {c.line}" for c in COMMANDS])
def test_every_command_of_the_benchmarks_readme_and_help_runs(command, readers, monkeypatch, capsys):
    check_command(command, readers(command.where), monkeypatch, capsys)
