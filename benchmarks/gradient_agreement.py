"""How close DropBP's gradient is to the exact one, block by block: the diagnostic behind "why does DropBP train a
worse model in the same time" (issue: DropBP's value on a real model).

On one batch of a recipe (its model, adapters, labels and loss), the exact gradient ``g`` is compared with the
gradient ``g_m`` under each of ``masks`` DropBP masks at ``drop_rate``, per decoder block (the block's trainable
parameters together):

- ``cos_when_trained``: mean cosine of ``g_m`` with ``g`` over the masks that left the block a gradient;
- ``norm_ratio``: mean ``|g_m| / |g|`` over all masks (0 where the block got none);
- ``mean_cos`` and ``mean_norm_ratio``: the same for the mean of ``g_m`` over the masks (what many steps average
  to: an unbiased estimator would point the same way as ``g``, scaled by the share of steps that train it).

``dropbp bench gradient-agreement --recipe smollm2-tasks --drop-rates 0.5 --masks 8 --out DIR`` writes
``gradient-agreement.{json,md,png}`` under ``DIR``. Blocks are found by structure (the decoder blocks that hold the
branches DropBP discovers), so any model the engine runs on is measured.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp.backends import Backend
from dropbp.core.branches import DiscoveredBranches, find_blocks, find_branches
from dropbp.core.engine import DropBP
from dropbp.recipes.for_benchmarks import (NON_NEGATIVE, POSITIVE, RATES, Naming, Problems, find_recipe, markdown_table,
                                           option_name, pyplot, setting)

from .harness import BenchSettings, run_benchmark
from .recipe_target import recipe_target


def block_index(model: nn.Module) -> dict[str, int]:
    """The decoder block (0 nearest the input) of every parameter inside one, by name: blocks found by structure,
    whatever the model calls them; a parameter outside every block (embeddings, the head) is not listed."""
    names = {id(param): name for name, param in model.named_parameters()}
    return {names[id(param)]: block for block, (_, module) in enumerate(find_blocks(model))
            for param in module.parameters() if id(param) in names}


def _gradients(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any,
               params: dict[str, nn.Parameter]) -> dict[int, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if loss.requires_grad:
        loss.backward()
    flat: dict[int, list[torch.Tensor]] = {}
    blocks = block_index(model)
    for name, param in params.items():
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        flat.setdefault(blocks.get(name, -1), []).append(grad.detach().double().flatten())
    model.zero_grad(set_to_none=True)
    return {block: torch.cat(parts) for block, parts in flat.items()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cosine of two flat gradients, computed in double (0 when either is zero)."""
    a, b = a.double(), b.double()
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
            "cos_when_trained": sum(cosine(g, full) for g in trained) / len(trained) if trained else None,
            "norm_ratio": sum(float(g.norm()) for g in grads) / len(grads) / norm if norm else None,
            "mean_cos": cosine(mean, full), "mean_norm_ratio": float(mean.norm()) / norm if norm else None}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """A summary (whole model, lower and upper third of the blocks) per setting, then cosine per block."""
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
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for s in result["settings"]:
        blocks = [r for r in s["blocks"] if r["block"] != "all" and r["block"] >= 0]
        x = [r["block"] for r in blocks]
        style = dict(color="black", linestyle="--") if s["allocation"] == "none" else {"linestyle": "-"}  # noise floor
        axes[0].plot(x, [r["cos_when_trained"] or 0.0 for r in blocks], marker="o", ms=3, label=s["label"], **style)
        axes[1].plot(x, [r["mean_cos"] for r in blocks], marker="s", ms=3, label=s["label"], **style)
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


@dataclass
class GradientAgreementSettings(BenchSettings):
    """What the gradient-agreement measurement depends on; :meth:`validate` checks it before any work starts."""

    recipe: str = setting("smollm2-tasks", "the recipe whose model, adapters, data, labels and loss are measured "
                                           "(its first batch after after_steps exact steps)",
                          allowed="a shipped recipe (dropbp recipes ls) or a recipe file")
    drop_rates: tuple[float, ...] = setting((0.5,), "drop rates of the uniform and depth allocations", allowed=RATES)
    allocations: tuple[str, ...] = setting(("uniform",), f"rate allocations, each {', '.join(ALLOCATIONS)} (at every "
                                                         "drop rate) or a dropbp allocate JSON result (its rates)",
                                           allowed=f"comma-separated, each one of {', '.join(ALLOCATIONS)} or an "
                                                   "existing allocate JSON file")
    output_projection: bool = setting(False, "each setting also with dropbp.train_output_projection (a dropped "
                                             "branch still trains the layer it ends with)")
    masks: int = setting(8, "DropBP masks drawn per setting", allowed=POSITIVE)
    after_steps: int = setting(0, "exact (DropBP off) training steps of the recipe first (its learning-rate schedule "
                                  "spanning the recipe's steps, as in a real run)", allowed=NON_NEGATIVE)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        p.check(find_recipe, self.recipe)
        bad = [a for a in self.allocations if a not in ALLOCATIONS and not (str(a).endswith(".json")
                                                                              and Path(a).is_file())]
        if bad:
            p.add(f"{name('allocations')} must each be one of {', '.join(ALLOCATIONS)} or an existing dropbp "
                  f"allocate JSON file, got {', '.join(map(repr, bad))}.")


def measure(settings: GradientAgreementSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """On the recipe's batch (after ``after_steps`` exact training steps; :func:`..recipe_target.recipe_target`):
    the next batch's exact gradient, then every setting's DropBP gradients, against this batch's exact gradient."""
    with recipe_target(settings.recipe, (), backend, seed=settings.seed, after_steps=settings.after_steps,
                       progress=progress) as target:
        batch, other = target.batch(0), target.batch(1)
        rows = settings_for(find_branches(target.model, seq_len=target.seq_len), settings.drop_rates,
                            settings.allocations)
        if settings.output_projection:
            rows = [twin for s in rows for twin in
                    (s, {**s, "label": f"{s['label']}, output projection trained", "output_projection": True})]
        rows.insert(0, {"label": "exact, the next batch", "allocation": "none", "drop_rate": 0.0, "rates": None,
                        "drop_fraction": 0.0, "blocks": batch_agreement(target.model, target.loss_fn, batch, other)})
        for s in rows[1:]:
            if progress:
                print(f"gradient agreement: {s['label']} ({settings.masks} masks)", flush=True)
            s["blocks"] = gradient_agreement(target.model, target.loss_fn, batch, s["drop_rate"], settings.masks,
                                             seed=settings.seed, seq_len=target.seq_len, rates=s["rates"],
                                             train_output_projection=s.get("output_projection", False))
    return {"benchmark": "gradient-agreement", "recipe": settings.recipe, "method": target.method,
            "masks": settings.masks, "after_steps": settings.after_steps, "batch": list(batch[0].shape),
            "options": settings.to_dict(), "settings": rows}


def main(settings: GradientAgreementSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench gradient-agreement``: measure, then write ``gradient-agreement.{json,md,png}``."""
    return run_benchmark("gradient-agreement", settings, measure, markdown, figure, progress=progress)
