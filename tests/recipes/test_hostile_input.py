"""Hostile and careless input: each gets one paragraph naming what is wrong and exit code 2, never a traceback, and
nothing is written. Recipe files are fuzzed as bytes (encodings, aliases, duplicate keys)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config.loader import parse_yaml, read_yaml
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from dropbp.recipes.training.distributed import world_from_environment

TINY = ["model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, "
        "num_key_value_heads: 1}", "train.steps=1", "train.eval_every=0", "train.exact_match=0"]


def refused(capsys, *argv: str) -> str:
    """Run the CLI; assert exit 2 with one error and no traceback; return the error."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "error:" in err, err
    return err


def bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,needle", [
    (bomb(7), "expands to more than 100000 values"),
    ("a: &a {y: *a}\n", "expands to more than"),
    ("name: a\nname: b\n", "duplicate key name at line 2"),
    ("train: {steps: 1, steps: 2}\n", "duplicate key steps at line 1"),
])
def test_yaml_bombs_self_references_and_duplicate_keys_are_refused(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_yaml(text, "r.yaml")


def test_merge_keys_may_still_be_overridden():
    assert parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")["other"] == {"x": 1, "y": 3}


def test_a_file_given_by_mistake_is_not_echoed(tmp_path, capsys):
    secret = "root:$6$Zq9AbCdEfGhIjKlMnOpQrStUvWxYz0123456789:19000:0:99999:7:::"
    path = tmp_path / "shadow"
    path.write_text(secret + "\n")
    err = refused(capsys, "recipes", "validate", str(path))
    assert "Zq9A" not in err and "$6$" not in err and "unknown key 'root'..." in err


def test_non_utf8_files_are_named(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"name: caf\xe9\n")
    assert "is not UTF-8 text (byte 0xe9 at offset 9)" in refused(capsys, "recipes", "validate", str(recipe))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(recipe)


@pytest.mark.parametrize("config,needle", [
    ("{hidden_size: -128}", r"model.config.hidden_size must be an integer >= 1, got -128"),
    ("{num_attention_heads: 0}", r"num_attention_heads must be an integer >= 1, got 0"),
    ("{vocab_size: abc}", r"vocab_size must be an integer >= 1, got 'abc'"),
    ("{hidden_size: 100}", "must be a multiple of num_attention_heads 8"),
    ("{num_key_value_heads: 3}", "multiple of num_key_value_heads 3"),
    ("{junk: 1}", "unknown fields junk"),
    ("{hidden_size: 131072, num_hidden_layers: 100000}", r"about 5.2\d*e\+15 parameters"),
])
def test_impossible_model_configs_are_refused_before_building(config, needle):
    with pytest.raises(ConfigError, match=needle):
        load_recipe(shipped()["tiny-tasks"], [f"model.config={config}"], device="cpu")


@pytest.mark.parametrize("override,needle", [
    ("dropbp.pool_size=1000000000000", r"dropbp.pool_size must be an integer in 1..65536"),
    ("model.lora_rank=100000000000", r"model.lora_rank must be an integer in 1..65536"),
    ("train.micro_batch_size=100000000000", r"train.micro_batch_size must be an integer in 1..65536"),
    ("name=" + "x" * 300, "name must be 1 to 100 letters"),
    ("name=../up", "name must be 1 to 100 letters"),
    ("data.columns=[a, b]", "data.columns must be a mapping"),
])
def test_sizes_and_names_are_bounded(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_recipe(shipped()["tiny-tasks"], [override], device="cpu")


@pytest.mark.parametrize("content,needle", [
    (b'{"instruction": "a", "output": "\xff"}\n', "is not UTF-8 text"),
    (b"", "is empty"),
    (b'{"instruction": null, "output": "x"}\n', "the record field 'instruction' must be text, got NoneType"),
])
def test_bad_data_files_are_named(tmp_path, capsys, content, needle):
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    out = tmp_path / "run"
    err = refused(capsys, "train", "tiny-tasks", *TINY, f"data.train={data}", "--output-dir", str(out))
    assert needle in err and not out.exists()


def test_chat_messages_must_be_mappings(tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": ["hi", "there"]}) + "\n")
    err = refused(capsys, "train", "tiny-tasks", *TINY, "data.format=chat", f"data.train={data}",
                  f"data.validation={data}", "--output-dir", str(tmp_path / "run"))
    assert "each chat message must be a mapping" in err


def test_an_empty_output_dir_and_a_bad_world_size_are_refused(monkeypatch, capsys, tmp_path):
    assert "--output-dir is empty" in refused(capsys, "train", "tiny-tasks", *TINY, "--output-dir", "")
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(ConfigError, match="WORLD_SIZE must be a non-negative integer"):
        world_from_environment()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="do not fit together"):
        world_from_environment()


def test_compare_refuses_a_json_array(tmp_path, capsys):
    (tmp_path / "throughput.json").write_text("[1, 2]")
    assert "is not a 'dropbp bench throughput' result" in refused(capsys, "bench", "compare", str(tmp_path),
                                                                  str(tmp_path))


def test_a_pickled_object_in_a_checkpoint_is_refused_without_advice_to_unpickle(tmp_path):
    import torch

    from dropbp.recipes.training.checkpoint import _load_plain

    path = tmp_path / "optimizer.pt"
    torch.save({"state": Path("x")}, path)  # an object, not tensors and numbers
    with pytest.raises(ConfigError, match="does not hold plain tensors") as caught:
        _load_plain(path)
    assert "weights_only=False" not in str(caught.value)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_as_a_recipe_give_a_recipe_or_one_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes(content)
    try:
        load_recipe(path, for_run=False)
    except ConfigError as err:
        assert str(err).strip()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["name: a", "name: b", "a: &x [1, 2]", "b: [*x, *x]", "train: {steps: 2}",
                                 "train: {steps: 2, steps: 3}", "c: &y {z: *y}", "\xe9: 1"]), max_size=6),
       st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_recipe_texts_with_aliases_duplicates_and_encodings(tmp_path_factory, lines, encoding):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes("\n".join(lines).encode(encoding))
    try:
        load_recipe(path, for_run=False)
    except ConfigError as err:
        assert str(err).strip()
