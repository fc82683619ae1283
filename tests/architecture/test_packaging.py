"""The package as users install it: an sdist, a wheel built from that sdist, and that wheel installed into a fresh
virtual environment with no source tree on its path.

The wheel installs one top-level import name, `dropbp`, with the four layers beneath it (nothing as generic as
`backends` or `recipes` that could collide with another package). Every module of the source tree imports from the
installed copy, and the documented first commands run from the installed console script. The development install is
editable, so nothing else in the suite would notice a module or a data file left out of the wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "dropbp_core", "backends", "recipes", "benchmarks")
LAYERS = {"dropbp_core": "dropbp.core", "backends": "dropbp.backends", "recipes": "dropbp.recipes",
          "benchmarks": "dropbp.benchmarks"}
pytestmark = pytest.mark.slow  # builds and installs: seconds, not a unit check (make test runs it, test-fast does not)


def source_modules() -> list[str]:
    """Every module of the source tree by its installed name (``dropbp.recipes.cli.train`` ...)."""
    names = []
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if "results" in parts:
                continue
            names.append(".".join([package, *parts[:-1]] if parts[-1] == "__init__" else [package, *parts]))
    return names


def source_data() -> list[str]:
    """Every data file the package reads (recipes, task data, cluster profiles, bench configs), by wheel path."""
    found = []
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT / folder)
            if path.is_file() and path.suffix in (".yaml", ".jsonl") and "results" not in relative.parts:
                found.append("/".join([*package.split("."), *relative.parts]))
    return found


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-4000:])
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """An sdist of a copy of the source tree, and a wheel built from that sdist (so both must hold everything)."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:  # build from a copy: a build leaves build/ and *.egg-info behind
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
         str(tmp / "sdist")], cwd=source)
    (sdist,) = (tmp / "sdist").glob("dropbp-*.tar.gz")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheel"),
         str(sdist)])
    (wheel,) = (tmp / "wheel").glob("dropbp-*.whl")
    return {"sdist": sdist, "wheel": wheel, "tmp": tmp}


def test_the_wheel_holds_every_module_and_data_file_under_one_namespace(built):
    names = zipfile.ZipFile(built["wheel"]).namelist()
    assert {n.split("/")[0] for n in names} == {"dropbp", built["wheel"].name.split("-py")[0] + ".dist-info"}
    assert {n.split("/")[1] for n in names if n.startswith("dropbp/")} == {"core", "backends", "recipes",
                                                                           "benchmarks"}
    assert "dropbp/__init__.py" not in names  # a namespace package
    modules = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    assert set(source_modules()) == modules
    assert set(source_data()) <= set(names)
    assert not [n for n in names if "/results/" in n]  # committed benchmark results are not part of the package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(built["wheel"]).read(entry_points).decode()
    assert "dropbp = dropbp.recipes.console:run" in text and "bench = dropbp.benchmarks.cli:register" in text
    with tarfile.open(built["sdist"]) as sdist:  # the sdist carries what a rebuild needs
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"pyproject.toml", "setup.py", "README.md", "recipes/configs/tiny-tasks.yaml"} <= members


@pytest.fixture(scope="module")
def installed(built) -> dict[str, Path]:
    """The wheel installed into a fresh virtual environment that sees the dependencies already installed here (by a
    path file: the development install's editable hook is not run there), and an empty working folder."""
    env = built["tmp"] / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dependencies = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()] + sorted(here)
    (purelib / "dependencies.pth").write_text("\n".join(dict.fromkeys(dependencies)) + "\n", encoding="utf-8")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         str(built["wheel"])])
    work = built["tmp"] / "work"
    work.mkdir()
    return {"python": python, "dropbp": env / "bin" / "dropbp", "work": work, "purelib": purelib}


def _in_env(installed, *command: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ["MPLBACKEND"] = "Agg"
    return run(list(command), cwd=installed["work"], env=environ)


def test_every_module_imports_from_the_installed_wheel(installed):
    script = ("import importlib, sys\n"
              "for name in sys.argv[2:]:\n"
              "    module = importlib.import_module(name)\n"
              "    assert module.__file__.startswith(sys.argv[1]), (name, module.__file__)\n"
              "print(len(sys.argv) - 2)")
    modules = [m for m in source_modules() if not m.endswith("__main__")]  # __main__ modules run, not import
    done = _in_env(installed, str(installed["python"]), "-c", script, str(installed["purelib"]), *modules)
    assert done.stdout.strip() == str(len(modules))


def test_the_first_commands_run_from_the_installed_console_script(installed):
    dropbp = str(installed["dropbp"])
    assert "usage: dropbp" in _in_env(installed, dropbp, "--help").stdout
    assert "tiny-tasks" in _in_env(installed, dropbp, "recipes", "ls").stdout
    shipped = installed["purelib"] / "dropbp" / "recipes" / "configs" / "tiny-tasks.yaml"
    _in_env(installed, dropbp, "recipes", "validate", str(shipped))
    assert "usage: dropbp bench" in _in_env(installed, dropbp, "bench", "--help").stdout
    _in_env(installed, dropbp, "allocate", "--model", "tiny", "--drop-rate", "0.5", "--seq-len", "32",
            "--out", "allocate")
    assert (installed["work"] / "allocate" / "allocate.json").is_file()
    assert "verdict: DropBP is exact" in _in_env(installed, dropbp, "check", "tiny").stdout
    _in_env(installed, dropbp, "train", "tiny-tasks", "train.steps=2", "--output-dir", "run")
    assert (installed["work"] / "run" / "metrics.csv").is_file()
