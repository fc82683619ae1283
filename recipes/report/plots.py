"""Plots of a training run: ``loss.png`` from the rows of ``metrics.csv``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dropbp.recipes.report.publish import pyplot


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[key])) for row in rows if row.get(key) not in ("", None)]


def plot_training_curve(rows: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Training and validation loss against step (and exact match on a right axis, when measured) into ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    train, val, matches = _series(rows, "loss"), _series(rows, "val_loss"), _series(rows, "exact_match")
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if matches:
        right = ax.twinx()
        right.plot(*zip(*matches), "s--", color="#2ca02c", label="exact match")
        right.set_ylabel("exact match")
        right.set_ylim(0, 1)
        right.legend(loc="upper center", fontsize=8)
    if train or val:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
