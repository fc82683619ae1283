"""The LM head and the loss on labelled positions only.

A causal LM's head (hidden -> vocabulary) and its cross-entropy lie outside every DropBP branch, and a usual forward
runs them over every position, though with a masked prompt and padding only the answer tokens carry a label. Here a
forward pre-hook on the model's output embeddings hands the head only the hidden states whose next token has a label,
so prompt and padding positions cost nothing there. The hook sits inside the model's own forward, so every wrapper
(PEFT, DDP) and anything the model does after its head (e.g. logit soft-capping) still applies, and the loss is the
mean over labelled tokens, as transformers' own. :func:`head_is_exact` checks on a real batch that a model gives the
same loss both ways, before a run turns this on.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dropbp.recipes.data.instruct import IGNORE
from dropbp.recipes.model.build import base_model
from dropbp.recipes.training.step import Batch, causal_lm_loss, input_and_labels


def output_head(model: nn.Module) -> nn.Module | None:
    """The module that maps hidden states to the vocabulary, under any DDP or PEFT wrapper; None if there is none."""
    getter = getattr(base_model(model), "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Module) else None


def labelled_positions_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The mean cross-entropy over labelled tokens, with the head run only at positions whose next token has a label
    (the same value and gradients as :func:`~dropbp.recipes.training.step.causal_lm_loss`)."""
    ids, labels = input_and_labels(batch)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    head = output_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings to run on labelled positions only.")

    def gather(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        return (hidden[:, :-1][keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    return F.cross_entropy(logits[0].float(), targets[keep])


@torch.no_grad()
def head_is_exact(model: nn.Module, batch: Batch, rtol: float = 1e-5) -> bool:
    """Whether :func:`labelled_positions_loss` equals the model's own loss on ``batch`` (eval mode, nothing
    dropped); False too where the model cannot run it (no output embeddings, a head that reshapes its input)."""
    was_training = model.training
    model.eval()
    try:
        full = causal_lm_loss(model, batch)
        labelled = labelled_positions_loss(model, batch)
    except (ValueError, RuntimeError, IndexError, TypeError):
        return False
    finally:
        model.train(was_training)
    return bool(torch.isfinite(full)) and bool(torch.allclose(labelled, full.float(), rtol=rtol, atol=1e-6))


def labelled_fraction(labels: torch.Tensor) -> float:
    """The share of positions where the head runs with the labelled-positions loss (next token labelled)."""
    return float((labels[:, 1:] != IGNORE).float().mean()) * (labels.shape[1] - 1) / labels.shape[1]


def head_fraction(loss_fn: Any, labels: torch.Tensor) -> float:
    """The share of positions where ``loss_fn`` runs the head: :func:`labelled_fraction` for the labelled-positions
    loss, 1 for any other."""
    return labelled_fraction(labels) if loss_fn is labelled_positions_loss else 1.0



def choose_loss(setting: str, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> Any:
    """The loss function ``train.head_positions`` asks for: ``all`` the model's own; ``labelled`` the
    labelled-positions loss (refused where :func:`head_is_exact` fails on the first two windows of ``ids`` and
    ``labels`` that have a label); ``auto`` labelled where it is exact, else the model's own."""
    if setting == "all":
        return causal_lm_loss
    device = next(model.parameters()).device
    rows = (labels[:, 1:] != IGNORE).any(1).nonzero().flatten()[:2]  # windows with a label: a loss to compare
    batch = (ids[rows].to(device), labels[rows].to(device))
    if head_is_exact(model, batch):
        return labelled_positions_loss
    if setting == "labelled":
        from dropbp.core.errors import ConfigError

        raise ConfigError(f"train.head_positions labelled: {type(model).__name__}'s loss differs when its head runs on "
                          "labelled positions only (its head or what follows it depends on the other positions); "
                          "use auto or all.")
    return causal_lm_loss
