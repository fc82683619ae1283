"""Every command the README and docs/*.md show runs: as written where it is cheap, shrunk where it is not (the same
code path with fewer steps, one seed, tiny batches; :mod:`tests.docs.runner`), or, where it cannot run here (a GPU, a
Gaudi, the Hub, eight processes), parsed and validated with its reason listed in one place
(:data:`tests.docs.runner.NOT_HERE`). Commands named in prose (`dropbp train`) have a ``--help`` that exits 0; a
command shown as refused exits 2 with one paragraph.

The commands of one file run in order in one working folder, as a reader would run them (``port -o FILE`` then
``port FILE``; ``train ... train.stop_after_steps=...`` then ``--resume``). The benchmarks README and the ``--help``
examples are in test_benchmark_and_help_commands.py (a second file, so that two workers share the work)."""
from __future__ import annotations

import pytest

from .commands import ALL_COMMANDS
from .runner import NOT_HERE, check_command, reason_not_here

COMMANDS = [c for c in ALL_COMMANDS if c.where.startswith(("README.md", "docs/"))]
pytestmark = pytest.mark.slow


def test_the_documentation_holds_the_commands_a_user_runs():
    runnable = [c for c in ALL_COMMANDS if not c.mention and not reason_not_here(c)]
    assert {c.words[0] for c in runnable if c.program == "dropbp"} >= {"train", "bench", "recipes", "port", "check",
                                                                       "env", "allocate", "selfcheck"}
    assert len(runnable) >= 60
    not_here = [c for c in ALL_COMMANDS if reason_not_here(c)]
    assert len(not_here) <= 39 and {reason_not_here(c) for c in not_here} <= {reason for _, reason in NOT_HERE}


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}: {c.line}" for c in COMMANDS])
def test_every_command_of_the_readme_and_docs_runs(command, readers, monkeypatch, capsys):
    check_command(command, readers(command.where), monkeypatch, capsys)
