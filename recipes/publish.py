"""Writing benchmark results: JSON with the environment, a Markdown table and a PNG, each written atomically."""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def environment(backend: Any) -> dict[str, Any]:
    """Device and library facts that every result file carries."""
    from dropbp.recipes.cli.env import library_versions

    return {"device": backend.name, "device_name": backend.device_name(), "versions": library_versions(),
            "torch_threads": torch.get_num_threads(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON, indented, written to a temporary file then renamed into place."""
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_text(path: Path, text: str) -> None:
    """Text written to a temporary file then renamed into place."""
    _atomic(path, lambda tmp: tmp.write_text(text if text.endswith("\n") else text + "\n"))


def write_figure(path: Path, figure: Any) -> None:
    """A matplotlib figure saved as PNG, then closed."""
    import matplotlib.pyplot as plt

    _atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)


def mib(value: float | None) -> float | None:
    """Bytes to MiB (None stays None)."""
    return None if value is None else value / 2**20


def publish(out: Path, name: str, result: dict[str, Any], markdown: str, figure: Any) -> None:
    """Write ``NAME.json``, ``NAME.md`` and ``NAME.png`` under ``out``, then print the table and the paths."""
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    write_json(paths[0], result)
    write_text(paths[1], markdown)
    write_figure(paths[2], figure)
    print(markdown)
    print("\nwrote " + ", ".join(str(p) for p in paths))


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
