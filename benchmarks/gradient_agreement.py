"""How close DropBP's gradient is to the exact one, block by block: the diagnostic behind "why does DropBP train a
worse model in the same time" (issue: DropBP's value on a real model).

On one batch of a recipe (its model, adapters, labels and loss), the exact gradient ``g`` is compared with the
gradient ``g_m`` under each of ``masks`` DropBP masks at ``drop_rate``, per decoder block (the block's trainable
parameters together):

- ``cos_when_trained``: mean cosine of ``g_m`` with ``g`` over the masks that left the block a gradient;
- ``norm_ratio``: mean ``|g_m| / |g|`` over all masks (0 where the block got none);
- ``mean_cos`` and ``mean_norm_ratio``: the same for the mean of ``g_m`` over the masks (what many steps average
  to: an unbiased estimator would point the same way as ``g``, scaled by the share of steps that train it).

``python -m dropbp.benchmarks.gradient_agreement smollm2-tasks --drop-rate 0.5 --masks 8 --out DIR`` writes
``gradient-agreement.{json,md,png}`` under ``DIR``.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.core.engine import DropBP

_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def block_of(name: str) -> int:
    """The decoder block a parameter belongs to (``-1``: outside every block, e.g. embeddings or the head)."""
    match = _BLOCK.search("." + name)
    return int(match.group(1)) if match else -1


def _gradients(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any,
               params: dict[str, nn.Parameter]) -> dict[int, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if loss.requires_grad:
        loss.backward()
    flat: dict[int, list[torch.Tensor]] = {}
    for name, param in params.items():
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        flat.setdefault(block_of(name), []).append(grad.detach().double().flatten())
    model.zero_grad(set_to_none=True)
    return {block: torch.cat(parts) for block, parts in flat.items()}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def gradient_agreement(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any,
                       drop_rate: float, masks: int = 8, seed: int = 0, seq_len: int = 2048) -> list[dict[str, Any]]:
    """Per block: how DropBP's gradient at ``drop_rate`` (``masks`` masks drawn from ``seed``) agrees with the exact
    gradient on ``batch`` (see the module docstring). The model is left without an engine and without gradients."""
    if DropBP.of(model) is not None:
        raise ValueError("gradient_agreement measures the exact gradient itself: remove the model's engine first.")
    model.train()
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    exact = _gradients(model, loss_fn, batch, params)
    dropbp = DropBP(model, drop_rate, seed=seed, seq_len=seq_len)
    try:
        sampled = []
        for step in range(masks):
            dropbp.begin_step(step)
            sampled.append(_gradients(model, loss_fn, batch, params))
    finally:
        dropbp.remove()
    rows = []
    for block in sorted(exact):
        full = exact[block]
        grads = [grads[block] for grads in sampled]
        trained = [g for g in grads if float(g.norm()) > 0]
        mean = torch.stack(grads).mean(0)
        norm = float(full.norm())
        rows.append({"block": block, "masks_trained": len(trained), "masks": masks,
                     "cos_when_trained": sum(_cos(g, full) for g in trained) / len(trained) if trained else None,
                     "norm_ratio": sum(float(g.norm()) for g in grads) / masks / norm if norm else None,
                     "mean_cos": _cos(mean, full), "mean_norm_ratio": float(mean.norm()) / norm if norm else None})
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The per-block table of a result."""
    from dropbp.recipes.for_benchmarks import markdown_table

    rows = [[str(r["block"]), f"{r['masks_trained']}/{r['masks']}",
             "-" if r["cos_when_trained"] is None else f"{r['cos_when_trained']:.3f}",
             "-" if r["norm_ratio"] is None else f"{r['norm_ratio']:.3f}", f"{r['mean_cos']:.3f}",
             "-" if r["mean_norm_ratio"] is None else f"{r['mean_norm_ratio']:.3f}"] for r in result["blocks"]]
    head = (f"# DropBP's gradient against the exact one: {result['recipe']} ({result['method']}), drop rate "
            f"{result['drop_rate']:g}, {result['masks']} masks, one batch\n\nBlock -1 is everything outside the "
            "blocks (embeddings, head) that trains.\n")
    return head + "\n" + markdown_table(["block", "masks that train it", "cos when trained", "norm ratio",
                                         "cos of the mean", "norm of the mean"], rows)


def figure(result: dict[str, Any]) -> Any:
    """Cosine with the exact gradient against block: per mask (when trained) and of the mean over masks."""
    from dropbp.recipes.for_benchmarks import pyplot

    plt = pyplot()
    blocks = [r for r in result["blocks"] if r["block"] >= 0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r["block"] for r in blocks], [r["cos_when_trained"] or 0.0 for r in blocks], "o-",
            label="one mask (when the block trains)")
    ax.plot([r["block"] for r in blocks], [r["mean_cos"] for r in blocks], "s-",
            label=f"mean of {result['masks']} masks")
    ax.set(xlabel="decoder block (0 = nearest the input)", ylabel="cosine with the exact gradient", ylim=(-0.1, 1.05),
           title=f"{result['recipe']}: DropBP p={result['drop_rate']:g} vs exact backprop")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure on a recipe's first training batch and publish the result set."""
    from dropbp.recipes.for_benchmarks import FineTune, find_recipe, load_recipe, publish

    parser = argparse.ArgumentParser(prog="python -m dropbp.benchmarks.gradient_agreement", description=__doc__)
    parser.add_argument("recipe")
    parser.add_argument("--drop-rate", type=float, default=0.5)
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("results/cpu"))
    args = parser.parse_args(argv)
    recipe = load_recipe(find_recipe(args.recipe), ["dropbp.drop_rate=0"], device="cpu")
    with tempfile.TemporaryDirectory() as scratch:  # the recipe's run folder: nothing of it is kept
        job = FineTune(recipe, Path(scratch) / "run", progress=False)
        job.setup()
        try:
            batch = job.data.batch(0, 0, 1, recipe.train.micro_batch_size, 0, 1)
            blocks = gradient_agreement(job.model, job.loss_fn, batch, args.drop_rate, args.masks,
                                        seq_len=recipe.data.seq_len)
        finally:
            job.cleanup()
    result = {"benchmark": "gradient-agreement", "recipe": args.recipe, "method": recipe.model.method,
              "drop_rate": args.drop_rate, "masks": args.masks, "batch": list(batch[0].shape), "blocks": blocks}
    publish(args.out, "gradient-agreement", result, markdown(result), figure(result))
    return result


if __name__ == "__main__":
    main()
