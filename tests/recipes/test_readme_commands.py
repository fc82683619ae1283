"""Every ``dropbp`` command in a ``bash``/``console`` block of the READMEs parses with the real parser, and every
recipe override in them is a valid recipe (the recipe is loaded with its overrides, as ``dropbp train`` would);
``torchrun``/``accelerate`` lines are checked for the command they launch."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dropbp.benchmarks.cli import register as register_bench
from dropbp.recipes.cli import main, parse
from dropbp.recipes.config.registry import find_recipe
from dropbp.recipes.config.schema import load_recipe

ROOT = Path(__file__).resolve().parents[2]
READMES = ("README.md", "benchmarks/README.md")
BLOCK = re.compile(r"^```(bash|console)\n(.*?)^```", re.S | re.M)
#: Placeholders a reader fills in, and what stands for them here.
PLACEHOLDERS = {"RECIPE": "tiny-tasks", "$RANK": "0", "$HEAD": "localhost", "DIR...": "results/a"}


def commands() -> list[tuple[str, list[str]]]:
    """``(where, words after 'dropbp')`` for every dropbp command line in the READMEs' shell blocks."""
    found = []
    for name in READMES:
        text = (ROOT / name).read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            joined = re.sub(r"\\\n\s*", " ", match.group(2))
            for line in joined.splitlines():
                if match.group(1) == "console":  # only the prompt's lines; the rest is output
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                for placeholder, value in PLACEHOLDERS.items():
                    line = line.replace(placeholder, value)
                words = shlex.split(line, comments=True)
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # environment assignments (DROPBP_ALLOW_DOWNLOADS=1 ...)
                if words and words[0] in ("torchrun", "accelerate") and "-m" in words:
                    module = words.index("-m")
                    words = ["dropbp", *words[module + 2:]] if words[module + 1] == "dropbp.recipes" else []
                if words and words[0] == "dropbp":
                    found.append((f"{name}: {line}", words[1:]))
    return found


COMMANDS = commands()


def test_the_readmes_hold_the_commands_a_user_runs():
    words = {tuple(w[:1]) for _, w in COMMANDS}
    assert {("train",), ("bench",), ("recipes",), ("port",), ("check",), ("env",), ("allocate",)} <= words
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("where,words", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_every_readme_command_parses(where, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = parse(words, [register_bench])
    assert callable(args.run)
    if words[0] == "train":  # the cheap part runs: the recipe and its overrides are checked as dropbp train would
        recipe, overrides = words[1], [w for w in words[2:] if "=" in w and not w.startswith("-")]
        load_recipe(find_recipe(recipe), overrides, device="cpu", for_run=False)
    if words[0] == "env" or words[:2] in (["recipes", "ls"], ["recipes", "show"]):  # cheap: they run for real
        assert main(words, [register_bench]) in (0, None)
