"""Every example in ``dropbp --help`` and in each subcommand's ``--help`` parses with the real parser; the cheap ones
run for real (env, recipes, port), and every command's ``--help`` exits cleanly."""
from __future__ import annotations

import argparse
import glob
import shlex
from pathlib import Path

import pytest

from dropbp.benchmarks.cli import register as register_bench
from dropbp.recipes.cli import build_parser, main, parse

ROOT = Path(__file__).resolve().parents[2]


def parsers(parser: argparse.ArgumentParser, prog: str = "dropbp") -> dict[str, argparse.ArgumentParser]:
    """Every parser under ``parser`` by its command words, the top one included."""
    found = {prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(parsers(sub, f"{prog} {name}"))
    return found


def examples() -> list[tuple[str, list[str]]]:
    out = []
    for command, parser in parsers(build_parser([register_bench])).items():
        for line in (parser.epilog or "").splitlines():
            if line.strip().startswith("dropbp "):
                out.append((command, shlex.split(line.strip())[1:]))
    return out


EXAMPLES = examples()


def test_every_command_shows_examples():
    commands = {command for command, _ in EXAMPLES}
    assert {"dropbp", "dropbp train", "dropbp recipes", "dropbp port", "dropbp allocate", "dropbp env",
            "dropbp bench", "dropbp bench regime"} <= commands
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("command,words", EXAMPLES, ids=[" ".join(w) for _, w in EXAMPLES])
def test_every_example_parses(command, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    words = [w for pattern in words for w in (sorted(glob.glob(pattern)) if "*" in pattern else [pattern])]
    args = parse(words, [register_bench])
    assert callable(args.run)


@pytest.mark.parametrize("command", sorted(parsers(build_parser([register_bench]))))
def test_every_help_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split()[1:], "--help"], [register_bench])
    assert done.value.code == 0 and "usage: " in capsys.readouterr().out


def test_the_cheap_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for command, words in EXAMPLES:
        if command in ("dropbp env", "dropbp port") or words[:2] in (["recipes", "ls"], ["recipes", "show"]):
            if "-o" in words:  # write the ported recipe here; the next example reads it
                words[words.index("-o") + 1] = str(tmp_path / words[words.index("-o") + 1])
            words = [str(tmp_path / w) if w.endswith(".yaml") and (tmp_path / w).exists() else w for w in words]
            assert main(words, [register_bench]) == 0, (words, capsys.readouterr().err)
            ran += 1
    assert ran >= 6
