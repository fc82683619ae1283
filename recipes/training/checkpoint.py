"""Checkpoints that a crash cannot break, and that load safely.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding the trained weights in safetensors (the PEFT adapter,
``adapter_model.safetensors`` + ``adapter_config.json``, loadable with ``PeftModel.from_pretrained``; or the full
``model.safetensors`` + ``config.json``), the optimizer and scheduler state and the random generators' state
(``torch.save`` of tensors and numbers, loaded back with ``weights_only=True``), and ``state.json``: the step and
each stateful part of the run under a fixed key (:data:`POLICY_KEY`: the drop policy's ``state_dict()``, rates and
counters; :data:`ALLOCATION_KEY`: the allocation schedule's, online estimates included). Last comes
``manifest.json``: the size and sha256 of every other file, so a resume can tell an intact checkpoint from a
damaged one (:func:`verify_checkpoint`) and fall back to the newest intact one. It is written in a hidden
``.step-NNNNNN.partial-*`` folder, fsynced, then renamed into place in one step, so a killed
process leaves the previous checkpoint intact (and the next start removes the partial folder). Only the newest
``keep`` are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.core.errors import ConfigError
from dropbp.recipes.report.publish import fsync_path

STEP_DIR = re.compile(r"^step-(\d{6,})$")
STATE = "state.json"
MANIFEST = "manifest.json"
#: Keys of ``state.json`` under which the run's stateful parts keep their ``state_dict()``.
POLICY_KEY = "policy"
ALLOCATION_KEY = "allocation"


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
        (staging / MANIFEST).write_text(manifest_text(manifest(staging)), encoding="utf-8")
        _fsync_tree(staging)
        if final.exists():  # the same step saved again (e.g. the end of a run that was saved at that step)
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_path(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    remove_partial(root)
    return final


def remove_partial(root: Path) -> list[Path]:
    """Remove what a killed save left under ``root`` (hidden ``.step-*.partial-*`` folders); returns them."""
    stale = sorted(root.glob(".step-*.partial-*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, Any]:
    """Size and sha256 of every file of a checkpoint folder (the manifest itself left out)."""
    return {"files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                      for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}}


def manifest_text(table: dict[str, Any]) -> str:
    """The one way a manifest is written, so that reading it back can check it is byte for byte what was written
    (a manifest cut short by its last newline still parses, but is damaged all the same)."""
    return json.dumps(table, indent=2) + "\n"


def verify_checkpoint(folder: Path) -> str | None:
    """None when every file of the checkpoint matches its manifest; else what is wrong, in a few words (a checkpoint
    without a manifest cannot be verified, so it counts as damaged)."""
    path = folder / MANIFEST
    if not path.is_file() or path.is_symlink():
        return f"{MANIFEST} is missing"
    try:
        text = path.read_text(encoding="utf-8")
        table = json.loads(text)
        expected = table["files"]
        if not isinstance(expected, dict):
            return "its manifest is not a file table"
        if manifest_text(table) != text:
            return f"its {MANIFEST} was changed after it was written"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its {MANIFEST} does not read ({type(err).__name__})"
    for name, facts in sorted(expected.items()):
        file = folder / name
        if not file.is_file() or file.is_symlink():
            return f"{name} is missing"
        if file.stat().st_size != facts.get("bytes") or _sha256(file) != facts.get("sha256"):
            return f"{name} does not match its checksum"
    extra = sorted(p.name for p in folder.iterdir() if p.name not in expected and p.name != MANIFEST)
    return f"it holds files its manifest does not list ({', '.join(extra)})" if extra else None


def intact_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under ``root`` that :func:`verify_checkpoint` passes, and the newer ones it skipped
    with what is wrong with each."""
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(checkpoints(root)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


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
    optimizer.load_state_dict(_load_plain(folder / "optimizer.pt"))
    scheduler.load_state_dict(_load_plain(folder / "scheduler.pt"))
    set_rng_state(_load_plain(folder / "rng.pt"))
    return json.loads((folder / STATE).read_text(encoding="utf-8"))


def _load_plain(path: Path) -> Any:
    """``torch.load`` of tensors and numbers only; anything else (a pickled object, code) is refused."""
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ConfigError(f"checkpoint file {path} does not hold plain tensors and numbers, so it is not loaded "
                          f"({type(err).__name__}); dropbp never unpickles objects from a checkpoint. Resume from "
                          "a checkpoint this version of dropbp wrote.") from None
