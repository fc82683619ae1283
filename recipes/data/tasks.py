"""The small instruction dataset this project ships for the CPU recipes: string tasks with exact answers (reverse,
copy, uppercase, sort the letters of a short word), so the loss falls on something an exact match can check.

``python -m dropbp.recipes.data.tasks OUT_DIR`` writes ``train.jsonl`` and ``validation.jsonl`` (alpaca format); the
files under ``recipes/task_data/`` were made by it with the defaults. Validation words never occur in training.
"""
from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

#: Where the shipped task files live (``recipes/task_data``).
TASK_DATA = Path(__file__).resolve().parents[1] / "task_data"

LETTERS = "abcdef"
TASKS = {
    "Reverse the letters.": lambda w: w[::-1],
    "Repeat the word.": lambda w: w,
    "Write the word in capitals.": lambda w: w.upper(),
    "Sort the letters.": lambda w: "".join(sorted(w)),
}


def make_records(seed: int = 0, validation_words: int = 40) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Every task on every 3- and 4-letter word over ``LETTERS``; ``validation_words`` words held out entirely."""
    words = ["".join(p) for n in (3, 4) for p in itertools.product(LETTERS, repeat=n)]
    rng = random.Random(seed)
    rng.shuffle(words)
    held, kept = set(words[:validation_words]), words[validation_words:]
    train = [{"instruction": task, "input": w, "output": f(w)} for w in kept for task, f in TASKS.items()]
    validation = [{"instruction": task, "input": w, "output": f(w)} for w in sorted(held) for task, f in TASKS.items()]
    rng.shuffle(train)
    return train, validation


def write(out: Path, seed: int = 0) -> None:
    """Write ``train.jsonl`` and ``validation.jsonl`` under ``out``."""
    train, validation = make_records(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", train), ("validation", validation)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else TASK_DATA)
