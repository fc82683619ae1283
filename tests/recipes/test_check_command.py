"""``dropbp check``: the branch table and the exactness verdict on one decoder of each block shape (config folders
built offline), exit 1 for a leaking engine or a model with no branches, exit 2 for bad input."""
from __future__ import annotations

import pytest

from dropbp.recipes.cli import main

from ..decoder_zoo import ONE_PER_SHAPE, decoder_config


def _folder(tmp_path, model_type):
    folder = tmp_path / model_type
    decoder_config(model_type, layers=3).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("shape,model_type", [
    item if item[1] in ("llama", "gemma2", "opt") else pytest.param(*item, marks=pytest.mark.slow)
    for item in sorted(ONE_PER_SHAPE.items())])
def test_check_finds_and_verifies_one_decoder_per_block_shape(tmp_path, capsys, shape, model_type):
    assert main(["check", _folder(tmp_path, model_type)]) == 0
    out = capsys.readouterr().out
    assert "3 blocks" in out and "branches: 6" in out and "verdict: DropBP is exact on this model (6 of 6" in out
    assert out.count("| full ") == 3 and out.count("| lora ") == 3
    if shape in ("sandwich-norm", "post-norm"):
        assert "self_attn -> post_attention_layernorm" in out and f"block shape: {shape}" in out
    if shape == "chain MLP":
        assert "fc1 -> fc2" in out


@pytest.mark.slow
def test_check_on_the_tiny_preset(capsys):
    assert main(["check", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny: LlamaForCausalLM (llama), 4 blocks" in out and "| attn | self_attn | LlamaAttention | 4 (layers 0..3)" in out
    assert "verdict: DropBP is exact on this model (6 of 6 checks" in out


def test_a_leaking_branch_is_caught_with_exit_1(tmp_path, capsys, monkeypatch):
    """A test double of a broken engine: dropped branches keep grad mode on and their outputs attached."""
    from dropbp.core import engine

    monkeypatch.setattr(engine.DropBP, "_before_branch", lambda self, index, module, args, kwargs: None)
    assert main(["check", _folder(tmp_path, "llama"), "--methods", "full"]) == 1
    out = capsys.readouterr().out
    assert "NOT exact" in out and "leaked" in out and "verdict: DropBP is NOT exact on this model" in out


def test_a_model_with_no_branches_is_refused_with_exit_1(tmp_path, capsys, monkeypatch):
    import re

    from dropbp.core import block_layout

    monkeypatch.setattr(block_layout, "ATTENTION_CLASS", re.compile("no-such-class"))
    assert main(["check", _folder(tmp_path, "llama")]) == 1
    out = capsys.readouterr().out
    assert "refused: found no decoder blocks" in out and "--attn/--mlp" in out
    assert main(["check", _folder(tmp_path, "llama"), "--attn", "self_attn", "--mlp", "mlp"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["check", "no/such/folder"], "MODEL must be a preset"),
    (["check", "tiny", "--methods", "qlora"], "--methods must list full and/or lora"),
    (["check", "tiny", "--layers", "0"], "--layers"),
    (["check", "hf:org/name"], "downloads are off"),
])
def test_bad_input_exits_2_with_one_paragraph(capsys, argv, message, monkeypatch):
    monkeypatch.delenv("DROPBP_ALLOW_DOWNLOADS", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
