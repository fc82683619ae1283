"""Tiny random Hugging Face models of each supported architecture, built in code (no download)."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import settings

from dropbp.core.seeding import seeded

# Property tests draw the same examples on every run (CI must be deterministic) and keep no example database.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one PyTorch thread each (their subprocesses too), not two per core.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

VOCAB = 64


def tiny_config(arch: str, layers: int = 2, width: int = 32):
    """A tiny config of ``arch`` (hidden size ``width``) with dropout off, so gradient comparisons are exact."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    llama_like = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, **common)
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return tf.Qwen3Config(head_dim=width // 4, **llama_like)
    if arch == "gemma":
        return tf.GemmaConfig(head_dim=width // 4, **llama_like)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=width, n_layer=layers, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                             attn_pdrop=0.0, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4,
                                max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0, **common)
    raise ValueError(arch)


ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2", "gpt_neox")


def tiny_model(arch: str = "llama", method: str = "full", seed: int = 0, layers: int = 2, width: int = 32):
    """A seeded tiny causal LM, optionally wrapped with PEFT LoRA (adapter B initialised non-zero so that LoRA
    gradients are not trivially zero)."""
    return seeded_model(tiny_config(arch, layers, width), method, seed)


def seeded_model(config, method: str = "full", seed: int = 0, **load):
    """A causal LM of ``config`` in train mode, initialised from ``seed`` without touching the global generator;
    with ``method="lora"``, PEFT LoRA whose B is non-zero. ``load``: ``from_config`` keywords."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, **load)
        if method == "lora":
            model = lora(model)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.02)
    return model.train()


def lora(model, rank: int = 8):
    """PEFT LoRA on every linear layer (rank 8, alpha 16, no dropout), adapters initialised from seed 0."""
    from peft import LoraConfig, get_peft_model

    with seeded(0):
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                target_modules="all-linear"))


def token_batch(seed: int = 0, batch: int = 2, seq: int = 16) -> torch.Tensor:
    """A seeded batch of token ids."""
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, batch):
    """Forward + backward; the loss and a name -> grad (or None) dict of the trainable parameters."""
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=batch, labels=batch).loss
    if loss.requires_grad:
        loss.backward()
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.fixture
def clone():
    return copy.deepcopy


@pytest.fixture
def habana_standin(tmp_path, monkeypatch):
    """Put the recording stand-in of the Gaudi SDK on sys.path; undo everything afterwards."""
    import sys

    from .backends.standins.habana import write_standin

    monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)
    monkeypatch.syspath_prepend(str(write_standin(tmp_path / "standin")))
    had_hpu, old_hpu = hasattr(torch, "hpu"), getattr(torch, "hpu", None)
    yield
    core = sys.modules.get("habana_frameworks.torch.core")
    if core is not None:
        core._standin_stop()
    for name in [n for n in sys.modules if n == "habana_frameworks" or n.startswith("habana_frameworks.")]:
        del sys.modules[name]
    if had_hpu:
        torch.hpu = old_hpu
    elif hasattr(torch, "hpu"):
        del torch.hpu


def source_text_tokens(max_bytes: int = 200_000) -> torch.Tensor:
    """Real text with structure and no download, for tests whose estimators need it: the source of a few
    standard-library modules, as byte tokens."""
    import inspect
    import argparse, collections, dataclasses, email.message, json.decoder, pathlib, textwrap, typing  # noqa: E401

    modules = (argparse, collections, dataclasses, email.message, json.decoder, pathlib, textwrap, typing)
    text = "".join(inspect.getsource(module) for module in modules).encode()[:max_bytes]
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def text_windows(tokens: torch.Tensor, step: int, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """``batch`` windows of ``seq`` tokens for ``step``, folded into the tiny models' vocabulary: a pure function of
    (seed, step), drawn through the core's seeded-generator idiom."""
    from dropbp.core.samplers import step_generator

    starts = torch.randint(0, len(tokens) - seq, (batch,), generator=step_generator(seed, step, "test-text"))
    return torch.stack([tokens[s:s + seq] for s in starts.tolist()]) % VOCAB


def logged_losses(out) -> list[tuple[str, str]]:
    """``(step, loss)`` of every row of a run folder's ``metrics.csv`` that has a training loss, as written."""
    import csv

    with open(out / "metrics.csv", newline="") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle) if row["loss"]]
