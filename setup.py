"""Package discovery for the wheel and the sdist: the four layer folders install under one namespace, ``dropbp``.

Every Python package under a layer folder is found by walking it (a new subpackage cannot be left out by hand), and
every file in a folder that is not a Python package (recipes, task data, cluster profiles, benchmark configs) ships
as package data of the nearest package above it. Committed benchmark results are not part of the package. The
project's metadata is in ``pyproject.toml``; this file only says where the code lies.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

#: Installed name -> folder in the source tree.
LAYERS = {"dropbp.core": "dropbp_core", "dropbp.backends": "backends", "dropbp.recipes": "recipes",
          "dropbp.benchmarks": "benchmarks"}
#: Folders that are neither code nor data the installed package reads.
NOT_SHIPPED = ("results", "__pycache__")


def _packages() -> list[str]:
    found = []
    for name, folder in LAYERS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder, exclude=[f"{x}*" for x in NOT_SHIPPED])]
    return found


def _package_data() -> dict[str, list[str]]:
    data: dict[str, list[str]] = {}
    for name, folder in LAYERS.items():
        root = Path(folder)
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(root).parts
            if not path.is_file() or any(part in NOT_SHIPPED for part in parts):
                continue
            if (path.parent / "__init__.py").is_file():
                continue  # a file beside the code (a README, a shell script) is not data
            owner = path.parent
            while not (owner / "__init__.py").is_file():
                owner = owner.parent
            package = ".".join([name, *owner.relative_to(root).parts])
            data.setdefault(package, []).append(path.relative_to(owner).as_posix())
    return data


setup(packages=_packages(), package_dir=dict(LAYERS), package_data=_package_data())
