"""The architecture check: `lint-imports` keeps the layers one way (core <- backends <- recipes <- benchmarks).

It passes on the tree as it is, and fails when a module of a lower layer imports a higher one. The failing case
runs on a copy of the four layers (under their installed names), so the working tree is never modified."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"core": "dropbp_core", "backends": "backends", "recipes": "recipes", "benchmarks": "benchmarks"}
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path, config: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def copy_layers(tmp_path: Path) -> Path:
    for name, folder in LAYERS.items():
        shutil.copytree(ROOT / folder, tmp_path / "dropbp" / name, ignore=shutil.ignore_patterns(
            "__pycache__", "results", "*.md", "*.sh", "*.png", "*.json"))
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def linter_installed():
    if not LINT.exists():
        pytest.fail(f"lint-imports not found next to {sys.executable}; install the dev extra: pip install -e '.[dev]'")


def test_the_tree_keeps_its_layers():
    result = lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("layer,upward", [
    ("core", "dropbp.backends"),          # the engine asking for a device
    ("core", "dropbp.recipes.config.presets"),   # the algorithm reaching into the application
    ("backends", "dropbp.recipes"),
    ("recipes", "dropbp.benchmarks.throughput"),
    ("recipes.config", "dropbp.recipes.training.step"),  # configuration reaching up into training
    ("recipes.training", "dropbp.recipes.cli.train"),    # the CLI used as a library
    ("benchmarks", "dropbp.recipes.model.build"),        # a benchmark past the recipes' public surface
])
def test_an_upward_import_breaks_the_check(tmp_path, layer, upward):
    tree = copy_layers(tmp_path)
    (tree / "dropbp" / layer.replace(".", "/") / "_upward_probe.py").write_text(f"import {upward}\n")
    result = lint(tree, ROOT / "pyproject.toml", pythonpath=tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert f"dropbp.{layer}._upward_probe" in result.stdout and upward in result.stdout, result.stdout


def test_a_folder_name_import_breaks_the_check(tmp_path):
    tree = copy_layers(tmp_path)
    (tree / "dropbp" / "recipes" / "_folder_probe.py").write_text("import backends\n")
    result = lint(tree, ROOT / "pyproject.toml", pythonpath=tree)
    assert result.returncode != 0 and "dropbp.recipes._folder_probe -> backends" in result.stdout, result.stdout
