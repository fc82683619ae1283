"""What a run folder must hold to start or resume a run, and where a resume continues from.

A new run needs a folder without a run. ``--resume`` needs the same recipe as the run it continues (the keys in
:data:`RESUMABLE_CHANGES` may differ), and continues from the newest *intact* checkpoint: partial folders of a
killed save are removed, damaged checkpoints are named and skipped, and a folder with no checkpoint yet starts
again from step 0 (so an interrupted run never needs cleaning by hand).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dropbp.core.errors import ConfigError
from dropbp.recipes.config.loader import read_yaml
from dropbp.recipes.config.schema import Recipe, load_recipe
from dropbp.recipes.report.publish import write_text_atomic
from dropbp.recipes.training.checkpoint import intact_checkpoint, remove_partial

#: Keys that may differ between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = ("train.stop_after_steps", "device")
#: The key of ``state.json`` holding the fingerprint of the run's data.
DATA_KEY = "data_fingerprint"


def check_run_folder(recipe: Recipe, out: Path, resume: bool, is_main: bool) -> None:
    """Refuse a new run in a folder that holds one, and a resume with another recipe (one message each)."""
    if resume:
        saved = out / "recipe.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no recipe.yaml); start it without --resume.")
        before = load_recipe(read_yaml(saved), base_dir=out).flat()
        now = recipe.with_absolute_paths().flat()
        changed = sorted(k for k in now if before.get(k) != now[k] and k not in RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(f"--resume: the recipe differs from the one {out} was started with, in "
                              f"{', '.join(changed)}; resume with the same recipe, or use another --output-dir.")
    elif is_main and ((out / "metrics.csv").exists() or (out / "checkpoints").exists()):
        raise ConfigError(f"--output-dir {out} already holds a run; pass --resume to continue it, or choose another "
                          "folder.")


def resume_point(out: Path, is_main: bool) -> Path | None:
    """The checkpoint a resume continues from (None: none yet, start from step 0), after removing what a killed
    save left; damaged newer checkpoints are named and skipped, and only damaged ones is an error."""
    root = out / "checkpoints"
    for stale in remove_partial(root) if is_main else []:
        print(f"removed {stale.name}, left by a save that was killed")
    folder, skipped = intact_checkpoint(root)
    for bad, problem in skipped:
        print(f"checkpoint {bad.name} is damaged ({problem}); not used")
    if folder is None and skipped:
        raise ConfigError(f"--resume: no intact checkpoint in {root} (every one is damaged); start the run again in "
                          "a new --output-dir.")
    if folder is None:
        print(f"{out} has no checkpoint yet: starting from step 0")
    return folder


def resumed_step(folder: Path, state: dict[str, Any], total_steps: int) -> int:
    """The step a checkpoint's ``state.json`` says it holds, checked against its folder and the run's length."""
    step, saved_total = state.get("step"), state.get("total_steps")
    if not isinstance(step, int) or not 0 < step <= total_steps or folder.name != f"step-{step:06d}" \
            or saved_total not in (None, total_steps):
        raise ConfigError(f"--resume: checkpoint {folder} says step {step!r} of {saved_total!r}, but it is "
                          f"{folder.name} of a run of {total_steps} steps; it does not belong to this run.")
    return step


def check_same_data(saved: str | None, now: str, allowed: bool) -> None:
    """Refuse a resume whose training or validation data changed since the run began (unless ``allowed``); a
    checkpoint that predates data fingerprints says nothing, so it is not refused."""
    if saved is not None and saved != now and not allowed:
        raise ConfigError("--resume: the training or validation data changed since this run began (their "
                          "fingerprint differs), so the resumed run would not continue the same training; restore "
                          "the data, start a new run, or pass --allow-changed-data to continue anyway.")
    if saved is not None and saved != now:
        print("the data changed since this run began; continuing on the new data (--allow-changed-data)")


def trim_masks_log(path: Path, start_step: int) -> None:
    """Keep the rows of a masks log for the steps before ``start_step`` (those after are drawn again)."""
    if path.is_file() and not path.is_symlink():
        kept = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
                if line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) < start_step]
        write_text_atomic(path, "".join(kept))
