"""Publishing results: JSON with the environment, a Markdown table and a PNG, moved into place as one set."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import stat
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dropbp.core.errors import ConfigError

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "optimum-habana", "habana-torch-plugin")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries dropbp works with (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(backend: Any) -> dict[str, Any]:
    """Device and library facts that every result file carries."""
    import torch

    return {"device": backend.name, "device_name": backend.device_name(), "versions": library_versions(),
            "torch_threads": torch.get_num_threads(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def mib(value: float | None) -> float | None:
    """Bytes to MiB (None stays None)."""
    return None if value is None else value / 2**20


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a folder after renames in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_readable(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # what a plain open() would give


def results_folder(out: Path | str | None, device: str) -> Path:
    """Where a command's results go: ``out``, or ``results/<device>``; refused when it cannot hold them."""
    from dropbp.recipes.config.fields import check_output_dir

    folder = Path(out) if out is not None else Path("results") / device
    check_output_dir("--out", folder)
    return folder


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a hidden temporary file beside ``path`` (``.NAME.*.partial``), then rename it into place:
    a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        _make_readable(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_regular_target(name: str, path: Path) -> None:
    """``path`` may be written as a file: it does not exist yet, or it is a regular file (not a symbolic link, a
    folder, a device node or a pipe); else :class:`ConfigError` naming ``name``."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode):
        kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{name} {path} is {kind}; dropbp writes only regular files. Give a new file name.")


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to the regular file ``path`` (created when missing; a symbolic link or a device planted
    there is refused, never followed)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        raise ConfigError(f"cannot append to {path} ({err.strerror}); it must be a regular file, not a link.") from None
    with os.fdopen(fd, "a") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path} is not a regular file; dropbp appends only to regular files.")
        handle.write(line)


def staging_prefix(name: str) -> str:
    """Hidden folders ``.NAME.publishing-*`` hold a set while it is written (their files end in ``.partial``)."""
    return f".{name}.publishing-"


def publish(out: Path, name: str, result: dict[str, Any], markdown: str, figure: Any) -> list[Path]:
    """Publish ``NAME.json``, ``NAME.md`` and ``NAME.png`` under ``out`` as one set, then print the table.

    The three files are written into a hidden staging folder under temporary names that no ``NAME.*``, ``*.json``
    or ``*.png`` glob matches, and fsynced. Only then is the set moved into place: the previous ``NAME.json`` is
    removed first and the new one moved in last, so ``NAME.json`` is the set's manifest: where it exists, its
    ``.md`` and ``.png`` beside it belong to it. A process killed at any point leaves the previous complete set, the
    new complete set, or no ``NAME.json`` (nothing published). Stale staging folders are cleared on the next run.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(staging_prefix(name) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    finals = [out / f"{name}.md", out / f"{name}.png", out / f"{name}.json"]  # the manifest (json) last
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(name), dir=out))
    try:
        staged = [staging / f"{path.name}.partial" for path in finals]
        staged[0].write_text(markdown if markdown.endswith("\n") else markdown + "\n")
        figure.savefig(staged[1], format="png", dpi=120, bbox_inches="tight")
        staged[2].write_text(json.dumps(result, indent=2) + "\n")
        for path in staged:
            _make_readable(path)
            fsync_path(path)
        (out / f"{name}.json").unlink(missing_ok=True)
        fsync_path(out)
        for source, target in zip(staged, finals):
            os.replace(source, target)
        fsync_path(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        plt.close(figure)
    print(markdown)
    print("\nwrote " + ", ".join(str(p) for p in [finals[2], finals[0], finals[1]]))
    return finals


def read_published(out: Path, name: str) -> dict[str, Any] | None:
    """The result of the set ``NAME`` under ``out`` if one is published (its manifest ``NAME.json`` and both
    companions exist), else None."""
    out = Path(out)
    manifest = out / f"{name}.json"
    if not (manifest.is_file() and (out / f"{name}.md").is_file() and (out / f"{name}.png").is_file()):
        return None
    return json.loads(manifest.read_text())


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
