"""The wheel installs one top-level import name, `dropbp`, with the four layers beneath it: nothing as generic as
`backends`, `recipes` or `benchmarks` that could collide with another package in a user's environment."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "dropbp_core", "backends", "recipes", "benchmarks")


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_wheel_holds_only_the_dropbp_namespace(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:  # build from a copy: the build leaves build/ and *.egg-info behind
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("dropbp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"dropbp", wheel.name.split("-py")[0] + ".dist-info"}
    assert {n.split("/")[1] for n in names if n.startswith("dropbp/")} == {"core", "backends", "recipes",
                                                                           "benchmarks"}
    assert "dropbp/recipes/cli/__init__.py" in names and "dropbp/__init__.py" not in names  # a namespace package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "dropbp = dropbp.recipes.console:run" in text and "bench = dropbp.benchmarks.cli:register" in text
