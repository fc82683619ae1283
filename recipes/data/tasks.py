"""The small instruction datasets this project ships for the CPU recipes, two task families with exact answers, so
the loss falls on something an exact match can check:

- ``strings`` (``recipes/task_data/``): reverse, copy, uppercase or sort the letters of a short word;
- ``numbers`` (``recipes/task_data/numbers/``): add seven to, double, or sum the digits of a number, or say whether
  it is even; a second family, so that a verdict that holds on one is checked on another.

``python -m dropbp.recipes.data.tasks [FAMILY [OUT_DIR]]`` writes ``train.jsonl`` and ``validation.jsonl`` (alpaca
format); the shipped files were made by it with the defaults. Validation inputs never occur in training.
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


NUMBER_TASKS = {
    "Add seven.": lambda n: str(int(n) + 7),
    "Double the number.": lambda n: str(2 * int(n)),
    "Sum the digits.": lambda n: str(sum(int(d) for d in n)),
    "Is the number even? Answer yes or no.": lambda n: "yes" if int(n) % 2 == 0 else "no",
}
#: Each family: its tasks, its inputs, and where its files are shipped.
FAMILIES = {
    "strings": (TASKS, lambda: ["".join(p) for n in (3, 4) for p in itertools.product(LETTERS, repeat=n)], TASK_DATA),
    "numbers": (NUMBER_TASKS, lambda: [str(n) for n in range(10, 1000)], TASK_DATA / "numbers"),
}


def family_folder(family: str) -> Path:
    """Where a task family's shipped ``train.jsonl`` and ``validation.jsonl`` are."""
    return FAMILIES[family][2]


def make_records(seed: int = 0, validation_words: int = 40,
                 family: str = "strings") -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Every task of ``family`` on every input (for strings: every 3- and 4-letter word over ``LETTERS``; for
    numbers: 10..999); ``validation_words`` inputs held out entirely."""
    tasks, inputs, _ = FAMILIES[family]
    words = inputs()
    rng = random.Random(seed)
    rng.shuffle(words)
    held, kept = set(words[:validation_words]), words[validation_words:]
    train = [{"instruction": task, "input": w, "output": f(w)} for w in kept for task, f in tasks.items()]
    validation = [{"instruction": task, "input": w, "output": f(w)} for w in sorted(held) for task, f in tasks.items()]
    rng.shuffle(train)
    return train, validation


def write(out: Path, seed: int = 0, family: str = "strings") -> None:
    """Write ``train.jsonl`` and ``validation.jsonl`` of ``family`` under ``out``."""
    train, validation = make_records(seed, family=family)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", train), ("validation", validation)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    chosen = sys.argv[1] if len(sys.argv) > 1 else "strings"
    write(Path(sys.argv[2]) if len(sys.argv) > 2 else FAMILIES[chosen][2], family=chosen)
