"""Training data that is on every machine without a download: the Python standard library's own source, as bytes."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import torch

from dropbp.core.errors import ConfigError
from dropbp.recipes.data.order import order_generator

VOCAB_SIZE = 256  # byte-level tokens


def _python_files(root: Path, skip: set[str]) -> list[Path]:
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in skip)
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(".py"))
    return found


def stdlib_corpus(max_bytes: int = 4_000_000) -> torch.Tensor:
    """Bytes of the standard library's ``.py`` files (sorted by path, tests excluded) as a 1-D long tensor.

    Read at run time from this interpreter's install, never committed; the same Python version gives the same text.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[bytes] = []
    total = 0
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    for path in _python_files(root, skip):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if total == 0:
        raise ConfigError(f"found no Python source under {root} to use as training text.")
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()


def split_corpus(tokens: torch.Tensor, fractions: tuple[float, ...]) -> list[torch.Tensor]:
    """Split a token stream into consecutive parts of the given fractions (e.g. pre-train / fine-tune / validation)."""
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(len(tokens) * fraction))
    return [tokens[a:b] for a, b in zip(bounds, bounds[1:])]


def batch_at(tokens: torch.Tensor, step: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """The ``step``-th batch of ``batch_size`` windows of ``seq_len`` tokens: a pure function of ``(seed, step)``."""
    if len(tokens) <= seq_len + 1:
        raise ConfigError(f"seq_len {seq_len} is longer than the text ({len(tokens)} tokens).")
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=order_generator(seed, step))
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])
