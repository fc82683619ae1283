"""One working folder per documentation file (or ``--help``), as each reader has their own."""
from __future__ import annotations

import re

import pytest

from .runner import prepare


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")

    def folder(where: str):
        path = root / re.sub(r"[^a-z0-9]+", "-", where.split(" (")[0].lower())
        if not path.exists():
            path.mkdir()
            prepare(path)
        return path

    return folder
