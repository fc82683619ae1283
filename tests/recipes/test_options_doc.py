"""docs/OPTIONS.md lists every option of every command with its allowed values, and matches the code."""
from __future__ import annotations

from pathlib import Path

from dropbp.recipes.cli import build_parser
from dropbp.recipes.cli.options_doc import commands, missing, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPTIONS.md"


def test_every_option_says_what_it_accepts():
    parser = build_parser()
    assert {c for c, _ in commands(parser)} == {"dropbp allocate", "dropbp bench throughput",
                                                 "dropbp bench memory", "dropbp bench convergence",
                                                 "dropbp bench compiles", "dropbp bench regime",
                                                 "dropbp bench recipe-time", "dropbp bench compare",
                                                 "dropbp bench gradient-agreement", "dropbp bench regime-verdict",
                                                 "dropbp bench selfcheck", "dropbp selfcheck", "dropbp advise",
                                                 "dropbp bench advise-validation"}
    assert missing(parser) == []


def test_the_committed_reference_is_current():
    assert DOC.read_text() == render(build_parser()), "docs/OPTIONS.md is stale: run `make docs`"
