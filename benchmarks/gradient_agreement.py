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
import json
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.core.branches import DiscoveredBranches, find_branches
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
                       drop_rate: float, masks: int = 8, seed: int = 0, seq_len: int = 2048, *,
                       rates: Sequence[float] | None = None,
                       train_output_projection: bool = False) -> list[dict[str, Any]]:
    """Per block: how DropBP's gradient at ``drop_rate`` (or per-branch ``rates``; ``masks`` masks drawn from
    ``seed``) agrees with the exact gradient on ``batch`` (see the module docstring). The last row, block ``"all"``,
    is every trainable parameter together. ``train_output_projection``: the engine's option of that name (a dropped
    branch still trains the layer it ends with). The model is left without an engine and without gradients."""
    if DropBP.of(model) is not None:
        raise ValueError("gradient_agreement measures the exact gradient itself: remove the model's engine first.")
    model.train()
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    exact = _gradients(model, loss_fn, batch, params)
    dropbp = DropBP(model, drop_rate, rates=rates, seed=seed, seq_len=seq_len,
                    train_output_projection=train_output_projection)
    try:
        sampled = []
        for step in range(masks):
            dropbp.begin_step(step)
            sampled.append(_gradients(model, loss_fn, batch, params))
    finally:
        dropbp.remove()
    return _rows(exact, sampled)


def batch_agreement(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any,
                    other: Any) -> list[dict[str, Any]]:
    """The noise floor the DropBP rows are read against: per block (and ``"all"``), how the exact gradient of
    ``other`` agrees with the exact gradient of ``batch`` (what changing the batch alone does to the direction)."""
    model.train()
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    return _rows(_gradients(model, loss_fn, batch, params), [_gradients(model, loss_fn, other, params)])


def _rows(exact: dict[int, torch.Tensor], sampled: list[dict[int, torch.Tensor]]) -> list[dict[str, Any]]:
    """The agreement of ``sampled`` gradients with ``exact`` per block, then of all blocks together (``"all"``)."""
    order = sorted(exact)

    def whole(grads: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.cat([grads[block] for block in order])

    rows = [_agreement(block, exact[block], [grads[block] for grads in sampled]) for block in order]
    return [*rows, _agreement("all", whole(exact), [whole(grads) for grads in sampled])]


def _agreement(block: int | str, full: torch.Tensor, grads: list[torch.Tensor]) -> dict[str, Any]:
    trained = [g for g in grads if float(g.norm()) > 0]
    mean = torch.stack(grads).mean(0)
    norm = float(full.norm())
    return {"block": block, "masks_trained": len(trained), "masks": len(grads),
            "cos_when_trained": sum(_cos(g, full) for g in trained) / len(trained) if trained else None,
            "norm_ratio": sum(float(g.norm()) for g in grads) / len(grads) / norm if norm else None,
            "mean_cos": _cos(mean, full), "mean_norm_ratio": float(mean.norm()) / norm if norm else None}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """A summary (whole model, lower and upper third of the blocks) per setting, then cosine per block."""
    from dropbp.recipes.for_benchmarks import markdown_table

    settings = result["settings"]
    layers = max(r["block"] for r in settings[0]["blocks"] if r["block"] != "all") + 1

    def third_mean(rows: list[dict[str, Any]], low: int, high: int, key: str) -> str:
        values = [r[key] for r in rows if r["block"] != "all" and low <= r["block"] < high and r[key] is not None]
        return _fmt(sum(values) / len(values)) if values else "-"

    summary = []
    for s in settings:
        whole = s["blocks"][-1]
        summary.append([s["label"], f"{s['drop_fraction']:.3f}", _fmt(whole["cos_when_trained"]),
                        _fmt(whole["mean_cos"]), _fmt(whole["norm_ratio"]),
                        third_mean(s["blocks"], 0, layers // 3, "mean_cos"),
                        third_mean(s["blocks"], layers - layers // 3, layers, "mean_cos")])
    per_block = [[str(row["block"])] + [f"{_fmt(s['blocks'][i]['cos_when_trained'])} / {_fmt(s['blocks'][i]['mean_cos'])}"
                                        for s in settings] for i, row in enumerate(settings[0]["blocks"])]
    head = (f"# DropBP's gradient against the exact one: {result['recipe']} ({result['method']}), {result['masks']} "
            f"masks, one batch after {result['after_steps']} exact training steps\n\n"
            "Cosine with the exact gradient of the same batch: per mask (mean over the masks that train the part) and "
            "of the mean over masks (what many steps average to). Block -1 is everything outside the blocks that "
            "trains; `all` is every trainable parameter together. The first row is the noise floor: the exact gradient "
            "of the next batch against this batch's.\n")
    return (head + "\n" + markdown_table(["setting", "FLOPs-weighted drop", "all: cos per mask", "all: cos of mean",
                                          "all: norm ratio", f"blocks 0-{layers // 3 - 1}: cos of mean",
                                          f"blocks {layers - layers // 3}-{layers - 1}: cos of mean"], summary)
            + "\n\n## Per block: cos per mask / cos of the mean\n\n"
            + markdown_table(["block", *(s["label"] for s in settings)], per_block))


def figure(result: dict[str, Any]) -> Any:
    """Cosine with the exact gradient against block, one line per setting: per mask, and of the mean over masks."""
    from dropbp.recipes.for_benchmarks import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for s in result["settings"]:
        blocks = [r for r in s["blocks"] if r["block"] != "all" and r["block"] >= 0]
        x = [r["block"] for r in blocks]
        style = dict(color="black", linestyle="--") if s["allocation"] == "none" else {}  # the noise floor
        axes[0].plot(x, [r["cos_when_trained"] or 0.0 for r in blocks], "o-", ms=3, label=s["label"], **style)
        axes[1].plot(x, [r["mean_cos"] for r in blocks], "s-", ms=3, label=s["label"], **style)
    axes[0].set(xlabel="decoder block (0 = nearest the input)", ylabel="cosine with the exact gradient",
                ylim=(-0.1, 1.05), title="one mask (when the block trains)")
    axes[1].set(xlabel="decoder block (0 = nearest the input)", title=f"mean of {result['masks']} masks")
    axes[1].legend(loc="lower right", fontsize=7)
    fig.suptitle(f"{result['recipe']} ({result['method']}): DropBP vs exact backprop, after {result['after_steps']} "
                 "exact steps", fontsize=10)
    return fig


def settings_for(found: DiscoveredBranches, drop_rates: Sequence[float],
                 allocations: Sequence[str]) -> list[dict[str, Any]]:
    """``(label, allocation, drop rate, per-branch rates)`` for every allocation at every drop rate; an allocation
    that names a JSON file (``dropbp allocate``'s result) is its branch rates, at the rate it was made for."""
    from dropbp.core.allocation import depth_sensitivity, drop_fraction, optimal_rates, uniform_rates

    layers = [b.layer for b in found.branches]
    out = []
    for allocation in allocations:
        if allocation.endswith(".json"):
            made = json.loads(Path(allocation).read_text())
            rates = [b["rate"] for b in made["branches"]]
            out.append({"label": f"{made['allocator']} allocation p={made['drop_rate']:g}", "allocation": allocation,
                        "drop_rate": made["drop_rate"], "rates": rates})
            continue
        for p in drop_rates:
            rates = (uniform_rates(len(layers), p) if allocation == "uniform"
                     else optimal_rates(found.flops, depth_sensitivity(layers), p))
            out.append({"label": f"{allocation} p={p:g}", "allocation": allocation, "drop_rate": p, "rates": rates})
    for s in out:
        s["drop_fraction"] = drop_fraction(found.flops, s["rates"])
    return out


ALLOCATIONS = ("uniform", "depth")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure on a recipe's batch (after ``--after-steps`` exact training steps) and publish the result set."""
    from dropbp.recipes.for_benchmarks import FineTune, find_recipe, load_recipe, publish

    parser = argparse.ArgumentParser(prog="python -m dropbp.benchmarks.gradient_agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--drop-rates", default="0.5", help="comma-separated rates in [0, 1)")
    parser.add_argument("--allocations", default="uniform",
                        help=f"comma-separated, each one of {', '.join(ALLOCATIONS)} or a dropbp allocate JSON result")
    parser.add_argument("--output-projection", action="store_true",
                        help="each setting also with dropbp.train_output_projection (a dropped branch still trains "
                             "the layer it ends with)")
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--after-steps", type=int, default=0, help="exact (DropBP off) training steps first")
    parser.add_argument("--out", type=Path, default=Path("results/cpu"))
    args = parser.parse_args(argv)
    drop_rates = [float(r) for r in args.drop_rates.split(",") if r.strip()]
    allocations = [a.strip() for a in args.allocations.split(",") if a.strip()]
    bad = [a for a in allocations if a not in ALLOCATIONS and not (a.endswith(".json") and Path(a).is_file())]
    if bad or not drop_rates or any(not 0 <= r < 1 for r in drop_rates) or args.masks < 1 or args.after_steps < 0:
        parser.error(f"--allocations must each be one of {', '.join(ALLOCATIONS)} or an existing allocate JSON file "
                     f"(got {bad}); --drop-rates each in [0, 1); --masks >= 1; --after-steps >= 0.")
    overrides = ["dropbp.drop_rate=0", "train.eval_every=0", "train.exact_match=0"]
    if args.after_steps:  # the learning-rate schedule spans the recipe's steps, as in a real run
        overrides.append(f"train.stop_after_steps={args.after_steps}")
    recipe = load_recipe(find_recipe(args.recipe), overrides, device="cpu")
    with tempfile.TemporaryDirectory() as scratch:  # the recipe's run folder: nothing of it is kept
        job = FineTune(recipe, Path(scratch) / "run", progress=False)
        job.setup()
        try:
            if args.after_steps:
                job.train()
            batch = job.data.batch(args.after_steps, 0, 1, recipe.train.micro_batch_size, 0, 1)
            settings = settings_for(find_branches(job.model, seq_len=recipe.data.seq_len), drop_rates, allocations)
            if args.output_projection:
                settings = [twin for s in settings for twin in
                            (s, {**s, "label": f"{s['label']}, output projection trained", "output_projection": True})]
            other = job.data.batch(args.after_steps + 1, 0, 1, recipe.train.micro_batch_size, 0, 1)
            settings.insert(0, {"label": "exact, the next batch", "allocation": "none", "drop_rate": 0.0,
                                "rates": None, "drop_fraction": 0.0,
                                "blocks": batch_agreement(job.model, job.loss_fn, batch, other)})
            for s in settings[1:]:
                s["blocks"] = gradient_agreement(job.model, job.loss_fn, batch, s["drop_rate"], args.masks,
                                                 seq_len=recipe.data.seq_len, rates=s["rates"],
                                                 train_output_projection=s.get("output_projection", False))
        finally:
            job.cleanup()
    result = {"benchmark": "gradient-agreement", "recipe": args.recipe, "method": recipe.model.method,
              "masks": args.masks, "after_steps": args.after_steps, "batch": list(batch[0].shape),
              "command": "python -m dropbp.benchmarks.gradient_agreement " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": settings}
    publish(args.out, "gradient-agreement", result, markdown(result), figure(result))
    return result


if __name__ == "__main__":
    main()
