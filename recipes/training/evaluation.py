"""Evaluation in eval mode (nothing dropped): validation loss, and two exact-match metrics named apart.

- :func:`greedy_exact_match`: the answer generated token by token with greedy decoding equals the reference (what a
  user sees; ``dropbp train`` reports it as ``exact_match``).
- :func:`teacher_forced_exact_match`: every answer token (and the end of sequence) is the argmax given the right
  prefix; one forward pass, so cheap enough for dense learning curves (``bench regime``). A greedy decode that
  matches is teacher-forced-correct and vice versa for the same model, up to ties in the argmax.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dropbp.recipes.data.instruct import IGNORE
from dropbp.recipes.model.build import base_model
from dropbp.recipes.training.step import LossFn, causal_lm_loss

#: Runs the forward under the precision's autocast (``backend.autocast(dtype)``).
Autocast = Callable[[], Any]


@torch.no_grad()
def validation_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    device: torch.device, autocast: Autocast, max_batches: int | None = None,
                    loss_fn: LossFn = causal_lm_loss) -> float:
    """Token-weighted mean loss over answer tokens of the validation windows (``labels`` -100 elsewhere), each
    batch's mean from ``loss_fn`` (the model's own loss, or the labelled-positions one: the same value)."""
    model.eval()
    batches = range(0, len(ids), batch_size)
    if max_batches is not None:
        batches = batches[:max_batches]
    total, count = 0.0, 0
    for start in batches:
        window = ids[start:start + batch_size].to(device)
        target = labels[start:start + batch_size].to(device)
        tokens = int((target[:, 1:] != IGNORE).sum())
        if tokens == 0:
            continue
        with autocast():
            loss = loss_fn(model, (window, target))
        total += float(loss) * tokens
        count += tokens
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def greedy_exact_match(model: nn.Module, prompts: Sequence[list[int]], answers: Sequence[str],
                       decode: Callable[[list[int]], str], eos_token_id: int | None, *, seq_len: int,
                       max_new_tokens: int, device: torch.device, autocast: Autocast) -> float:
    """Share of prompts whose greedy continuation (up to ``max_new_tokens`` or the end of sequence) decodes to the
    reference answer exactly (surrounding white space ignored)."""
    model.eval()
    hits = 0
    for ids, answer in zip(prompts, answers):
        produced = greedy_answer(model, list(ids), eos_token_id, seq_len=seq_len, max_new_tokens=max_new_tokens,
                                 device=device, autocast=autocast)
        hits += decode(produced).strip() == answer.strip()
    model.train()
    return hits / max(len(prompts), 1)


@torch.no_grad()
def greedy_answer(model: nn.Module, ids: list[int], eos_token_id: int | None, *, seq_len: int, max_new_tokens: int,
                  device: torch.device, autocast: Autocast) -> list[int]:
    """The greedy continuation of ``ids`` (without the end of sequence), each step seeing the last ``seq_len``
    tokens. While they all fit, the model's key-value cache carries the prefix and only the new token is run
    (a forward over the whole window otherwise); the head runs on the last position only."""
    produced: list[int] = []
    past = None
    last_only = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
    cache = "cache" if accepts(model, "cache") else "past_key_values"  # the name since transformers 5.2x, and before
    for _ in range(max_new_tokens):
        cached = past is not None and len(ids) + len(produced) <= seq_len
        inputs = torch.tensor([produced[-1:] if cached else (ids + produced)[-seq_len:]], device=device)
        with autocast():
            out = model(input_ids=inputs, use_cache=True, **{cache: past if cached else None}, **last_only)
        past = getattr(out, cache)
        token = int(out.logits[0, -1].argmax())
        if token == eos_token_id:
            break
        produced.append(token)
    return produced


def accepts(model: nn.Module, argument: str) -> bool:
    """Whether the forward of ``model`` (under any PEFT or DDP wrapper) takes ``argument``."""
    return argument in inspect.signature(base_model(model).forward).parameters


@torch.no_grad()
def teacher_forced_exact_match(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(validation loss over answer tokens, teacher-forced exact match) in one forward pass of every window."""
    model.eval()
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    answer = target != IGNORE
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
    loss = float((losses * answer).sum() / answer.sum())
    correct = (logits.argmax(-1) == target) | ~answer
    model.train()
    return loss, float(correct.all(dim=1).float().mean())
