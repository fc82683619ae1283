"""Every command the documentation shows a user: the shell blocks and inline command spans of README.md,
benchmarks/README.md and docs/*.md, and the examples of every ``--help``. Each is found as written, then normalised
(placeholders filled, environment assignments and launchers stripped) into the words after ``dropbp``."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "benchmarks/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
BLOCK = re.compile(r"^```(bash|console|sh)\n(.*?)^```", re.S | re.M)
#: An inline command: a code span that starts with a program a user runs.
INLINE = re.compile(r"`((?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?(?:dropbp|python -m|make|bash) [^`]+)`", re.S)
#: Placeholders a reader fills in, and what stands for them here: whole words, then values by the option or key
#: they follow.
PLACEHOLDERS = {"RECIPE": "tiny-tasks", "DIR...": "results/a", "DIR": "results/a", "MODEL": "tiny",
                "CLUSTER": "gaudi2", "my-recipe.yaml": "recipes/configs/tiny-tasks.yaml",
                "RESULT.json...": str(ROOT / "benchmarks/results/cpu/regime-learn-strings.json")}
#: Placeholders inside a word: an allocation file of the tiny model (made by ``dropbp allocate``), a rank, a host.
IN_WORDS = {"ALLOCATE.json": str(ROOT / "benchmarks/results/cpu/allocate/full-seed0/allocate.json"), "$RANK": "0",
            "$HEAD": "localhost"}
BY_OPTION = {"method": "lora", "seed": "0", "sampler": "pool", "nodes": "2", "to": "gaudi2", "after-steps": "1",
             "out": "results/out", "head_positions": "labelled"}


@dataclass
class Command:
    """One documented command line: where it is written, the line as written, and its program and words."""

    where: str
    line: str
    env: dict[str, str] = field(default_factory=dict)
    program: str = ""
    words: list[str] = field(default_factory=list)
    #: A command named in prose (``dropbp train``) or elided (``... --out ...``): its ``--help`` is checked.
    mention: bool = False
    #: Shown to be refused (its comment says so): it must exit 2 with one paragraph.
    refused: bool = False

    def key(self) -> str:
        """The command as run (environment, program, words), less where it writes: two lines that differ only in
        comments or output folders run the same code and are checked once."""
        words, skip = [], False
        for word in self.words:
            if not skip and word not in OUTPUT_OPTIONS and not re.match(r"[\w.-]*\bout=", word):
                words.append(word)
            skip = word in OUTPUT_OPTIONS
        return " ".join([*(f"{k}={v}" for k, v in sorted(self.env.items())), self.program, *words])


def _fill(words: list[str]) -> list[str]:
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and re.fullmatch(r"[A-Z]+|\.\.\.", value):
            word = f"{key}={BY_OPTION[key.rsplit('.', 1)[-1]]}"
        elif out and out[-1].startswith("--") and re.fullmatch(r"[A-Z]+|\.\.\.", word):
            word = BY_OPTION[out[-1][2:]]
        for placeholder, value in IN_WORDS.items():
            word = word.replace(placeholder, value)
        out.append(PLACEHOLDERS.get(word, word))
    return out


def _expand(line: str) -> list[str]:
    """Shell brace expansion of one ``{a,b,c}`` group (``regime-{learn,adapt}-cpu.yaml``)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", line)
    if not match:
        return [line]
    return [x for part in match.group(1).split(",")
            for x in _expand(line[:match.start()] + part + line[match.end():])]


def _parse(where: str, line: str) -> Command | None:
    mention = bool(re.search(r"\[[^]]*\.\.\.\]", line))  # a synopsis: `dropbp train RECIPE [key=value ...]`
    line = re.sub(r"\[[^]]*\.\.\.\]", "", line)
    try:
        words = _fill(shlex.split(line, comments=True))
    except (ValueError, KeyError):
        return None
    command = Command(where, line.strip(), mention=mention, refused=bool(re.search(r"#\s*refused", line)))
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, _, value = words.pop(0).partition("=")
        command.env[key] = value
    if not words:
        return None
    program = words[0].removeprefix(".venv/bin/")
    if program in ("torchrun", "accelerate") and "-m" in words:  # a launcher of dropbp's own module
        module = words.index("-m")
        command.program, command.words = f"{program} -m {words[module + 1]}", words[module + 2:]
        return command
    if program == "python" and words[1:2] == ["-m"]:
        command.program, command.words = f"python -m {words[2]}", words[3:]
        command.mention = command.mention or "..." in command.words
        return command
    command.program, command.words = program, words[1:]
    named = all(w in COMMAND_NAMES for w in command.words) and command.words not in (["env"], ["recipes", "ls"])
    command.mention = command.mention or "..." in command.words or any(w.endswith("/...") for w in command.words) \
        or (program == "dropbp" and named)
    return command


def _lines(text: str, console: bool) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        if console:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        out.append(line)
    return out


def documented() -> list[Command]:
    """Every command in the documentation files (shell blocks and inline spans), in order, without repeats."""
    found: dict[str, Command] = {}
    for name in DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        lines = [(f"{name} (block)", line) for match in BLOCK.finditer(text)
                 for line in _lines(match.group(2), match.group(1) == "console")]
        lines += [(f"{name} (inline)", re.sub(r"\s+", " ", match.group(1)).strip())
                  for match in INLINE.finditer(BLOCK.sub("", text))]
        for where, line in lines:
            for one in _expand(line):
                command = _parse(where, one)
                if command and command.program in PROGRAMS:
                    found.setdefault(command.key(), command)
    return list(found.values())


def unique(commands: list[Command]) -> list[Command]:
    """``commands`` in order, each :meth:`Command.key` once (where it first appears)."""
    found: dict[str, Command] = {}
    for command in commands:
        found.setdefault(command.key(), command)
    return list(found.values())


def help_examples(parser_commands) -> list[Command]:
    """The example lines of every ``--help`` epilog (``parser_commands``: command words -> parser)."""
    found: dict[str, Command] = {}
    for name, parser in parser_commands.items():
        for line in (parser.epilog or "").splitlines():
            if line.strip().startswith("dropbp "):
                command = _parse(f"{name} --help", line.strip())
                if command:
                    found.setdefault(command.key(), command)
    return list(found.values())


#: Options that say where a command writes.
OUTPUT_OPTIONS = ("--out", "-o", "--output-dir")
#: Command names: a line of nothing else names a command in prose (`dropbp train`) rather than runs one.
COMMAND_NAMES = {"train", "recipes", "port", "allocate", "check", "bench", "selfcheck", "ls", "throughput", "memory",
                 "convergence", "regime", "recipe-time", "gradient-agreement", "regime-verdict", "compiles", "compare"}
#: The programs whose documented lines are collected.
PROGRAMS = {"dropbp", "make", "bash", "torchrun -m dropbp.recipes", "accelerate -m dropbp.recipes", "torchrun",
            "accelerate"} | {f"python -m {m}" for m in ("dropbp.recipes", "dropbp.benchmarks",
                                                          "dropbp.recipes.data.tasks", "dropbp.recipes.cli.options_doc")}


def _all_commands() -> list[Command]:
    from dropbp.benchmarks.cli import register as register_bench
    from dropbp.recipes.cli import build_parser

    from ..recipes.test_help_examples import parsers

    return unique(documented() + help_examples(parsers(build_parser([register_bench]))))


#: Each command once, where it first appears (the documentation files, then the ``--help`` examples).
ALL_COMMANDS = _all_commands()
