"""The recipes this project ships (``recipes/configs/**/*.yaml``), found by name."""
from __future__ import annotations

from pathlib import Path

from dropbp.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shipped() -> dict[str, Path]:
    """Recipe name (its path under ``recipes/configs`` without ``.yaml``, e.g. ``paper/llama2-7b-lora-alpaca``) ->
    path, for every shipped recipe."""
    return {path.relative_to(CONFIGS).with_suffix("").as_posix(): path for path in sorted(CONFIGS.rglob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = shipped()
    if name_or_path in known:
        return known[name_or_path]
    raise ConfigError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe; shipped: "
                      f"{', '.join(known)} (dropbp recipes ls).")
