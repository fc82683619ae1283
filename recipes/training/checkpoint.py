"""Checkpoints that a crash cannot break, and that load safely.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding the trained weights in safetensors (the PEFT adapter,
``adapter_model.safetensors`` + ``adapter_config.json``, loadable with ``PeftModel.from_pretrained``; or the full
``model.safetensors`` + ``config.json``), the optimizer and scheduler state and the random generators' state
(``torch.save`` of tensors and numbers, loaded back with ``weights_only=True``), and ``state.json``: the step and
each stateful part of the run under a fixed key (:data:`POLICY_KEY`: the drop policy's ``state_dict()``, rates and
counters; :data:`ALLOCATION_KEY`: the allocation schedule's, online estimates included; :data:`RATE_KEY`: the
adaptive rate's). It is written in a hidden
``.step-NNNNNN.partial-*`` folder, fsynced, then renamed into place in one step, so a killed process leaves the
previous checkpoint intact. Only the newest ``keep`` are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.recipes.report.publish import fsync_path

STEP_DIR = re.compile(r"^step-(\d{6,})$")
STATE = "state.json"
#: Keys of ``state.json`` under which the run's stateful parts keep their ``state_dict()``.
POLICY_KEY = "policy"
ALLOCATION_KEY = "allocation"
RATE_KEY = "rate"  # the adaptive rate controller


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model: nn.Module, folder: Path) -> None:
    """The trainable weights: the PEFT adapter (``save_pretrained``), or every weight of a full fine-tuning run."""
    if _is_peft(model):
        model.save_pretrained(str(folder), safe_serialization=True)
        return
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))
    if getattr(model, "config", None) is not None:
        model.config.to_json_file(str(folder / "config.json"))


def load_weights(model: nn.Module, folder: Path) -> None:
    """Put a checkpoint's weights back into ``model`` (safetensors only)."""
    if _is_peft(model):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    from safetensors.torch import load_model

    load_model(model, str(folder / "model.safetensors"))


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], keep: int, rng: dict[str, Any]) -> Path:
    """Write ``root/step-NNNNNN`` atomically and prune to the newest ``keep``; returns the checkpoint folder.
    ``state`` (JSON) goes into ``state.json`` beside the step; ``rng`` is the backend's :meth:`rng_state`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=root))
    try:
        save_weights(model, staging)
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save(rng, staging / "rng.pt")
        (staging / STATE).write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
        _fsync_tree(staging)
        if final.exists():  # the same step saved again (e.g. the end of a run that was saved at that step)
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_path(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    set_rng_state: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and generators (``set_rng_state``: the backend's) from ``folder``;
    returns its ``state.json``."""
    load_weights(model, folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / STATE).read_text())
