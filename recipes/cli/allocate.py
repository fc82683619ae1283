"""``dropbp allocate``: per-branch sensitivities and the drop rates an allocator gives them, as a table and plot."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from dropbp import backends
from dropbp.core.allocation import ALLOCATORS, allocate, check_feasible, drop_fraction, validate_drop_rate
from dropbp.core.errors import ConfigError
from dropbp.core.sensitivity import SENSITIVITY_METHODS
from dropbp.recipes.config.command_settings import CommandSettings
from dropbp.recipes.config.fields import POSITIVE, RATE, SEED, Naming, add_command, check_number, option_name, setting
from dropbp.recipes.config.loader import Problems
from dropbp.recipes.config.options import method_field, model_field, seq_len_field
from dropbp.recipes.config.presets import PRESETS, check_model, check_seq_len
from dropbp.recipes.config.registry import find_recipe

EXAMPLES = """examples:
  dropbp allocate --model tiny --method lora --drop-rate 0.875 --sensitivity fast --allocator paper
  dropbp allocate --sensitivity fast --compare exact --seed 1
  dropbp allocate --allocator optimal --cap 0.95 --out results/alloc
  dropbp allocate --model smollm2-135m-instruct --data smollm2-tasks --batch-size 16"""


@dataclass
class AllocateSettings(CommandSettings):
    """One sensitivity measurement and the drop rates an allocator derives from it."""

    model: str = model_field("tiny")
    method: str = method_field()
    drop_rate: float = setting(0.875, "target rate in [0, 1)", allowed=RATE)
    sensitivity: str = setting("fast", "estimator: exact (2L+1 passes) or fast (1 pass)", choices=SENSITIVITY_METHODS)
    allocator: str = setting("paper", "paper (greedy, steps of 0.1), optimal (exact minimiser of sum C p^2), uniform",
                             choices=ALLOCATORS)
    cap: float = setting(0.9, "highest rate of any branch",
                         allowed="finite number in (0, 1), and at least --drop-rate for the paper and optimal allocators")
    compare: str | None = setting(None, "also compute exact sensitivity; report Spearman and the cost of both",
                                  choices=("exact",), allowed="exact, or leave out")
    data: str = setting("corpus", "what sensitivity is measured on: corpus (the Python standard library's source as "
                                  "bytes, for the byte-level presets), or a shipped recipe or recipe file (the first "
                                  "batch of its training data through the model's own tokenizer, with the recipe's "
                                  "labels; seq_len is the recipe's), e.g. smollm2-tasks",
                        allowed="corpus, a shipped recipe (dropbp recipes ls) or a recipe file")
    seq_len: int = seq_len_field(256, "tokens per sequence")
    batch_size: int = setting(4, "sequences in the batch", allowed=POSITIVE)
    seed: int = setting(0, "seed for the weights and the batch", allowed=SEED)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        before = len(p.items)
        p.check(check_model, self.model, name("model"))
        model_ok = len(p.items) == before
        try:
            rate = validate_drop_rate(self.drop_rate, "--drop-rate")
        except ConfigError:
            rate = None  # the declared check has reported it
        if model_ok and isinstance(self.seq_len, int) and self.seq_len >= 1:
            p.check(check_seq_len, self.model, self.seq_len)
        if self.data != "corpus":
            p.check(find_recipe, self.data)
        cap = p.check(check_number, "--cap", self.cap, low=0, high=1, low_open=True, high_open=True)
        if self.allocator != "uniform" and cap is not None and rate is not None:
            p.check(check_feasible, rate, cap)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``allocate`` subcommand."""
    add_command(subparsers, "allocate", AllocateSettings, lambda settings, args: run(settings),
                help="sensitivity-based drop rates per branch", epilog=EXAMPLES,
                description="Measure each branch's sensitivity on a batch of text and allocate drop rates under the "
                            "FLOPs budget; print the table and write JSON + a plot of the rates per layer.")


def measurement_batch(settings: AllocateSettings, device: torch.device) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``labels`` of the batch sensitivity is measured on: windows of the standard library's source
    as bytes with the next-token loss on every position, or the first training windows of a recipe's data through the
    model's tokenizer with the recipe's labels."""
    if settings.data == "corpus":
        from dropbp.recipes.data.corpus import batch_at, stdlib_corpus

        ids = batch_at(stdlib_corpus(1_000_000), settings.seed, settings.batch_size, settings.seq_len, settings.seed)
        return {"input_ids": ids.to(device), "labels": ids.to(device)}  # the language-model loss on every window
    from dropbp.recipes.config.presets import downloads_allowed
    from dropbp.recipes.config.schema import ModelSection, load_recipe
    from dropbp.recipes.data.instruct import load_data
    from dropbp.recipes.data.tokenizers import load_tokenizer

    recipe = load_recipe(find_recipe(settings.data))
    tokenizer = load_tokenizer("auto", ModelSection(name=settings.model).source, is_preset=settings.model in PRESETS,
                               local_only=not downloads_allowed(), trust_remote_code=False)
    data = load_data(recipe.data, recipe.base_dir, tokenizer, settings.seed)
    return {"input_ids": data.train_ids[:settings.batch_size].to(device),
            "labels": data.train_labels[:settings.batch_size].to(device)}


def run(settings: AllocateSettings) -> int:
    """Validate, measure, allocate, write, print."""
    from dropbp.core.engine import DropBP
    from dropbp.core.sensitivity import compute_sensitivity, spearman
    from dropbp.recipes.report.allocation import allocation_figure, allocation_markdown
    from dropbp.recipes.model.build import apply_method, build_model, check_fits
    from dropbp.recipes.report.publish import environment, publish, results_folder

    settings.validate()
    backend = backends.get(settings.device)
    out = results_folder(settings.out, backend.name)
    check_fits(settings.model, dtype=torch.float32, method=settings.method,
               capacity_bytes=backend.memory_capacity_bytes())
    model = apply_method(build_model(settings.model, device=backend.device, seed=settings.seed), settings.method,
                         seed=settings.seed)
    dropbp = DropBP(model, 0.0, seed=settings.seed, seq_len=settings.seq_len)
    batch = measurement_batch(settings, backend.device)
    sensitivity = compute_sensitivity(settings.sensitivity, model, dropbp, batch, seed=settings.seed, progress=True)
    rates = allocate(settings.allocator, dropbp.flops, sensitivity.values, settings.drop_rate, cap=settings.cap)
    total = sum(dropbp.flops)
    branches = [{**b.to_dict(), "flops_share": b.flops / total, "sensitivity": s, "rate": r}
                for b, s, r in zip(dropbp.branches, sensitivity.values, rates)]
    result = {"command": "allocate", **environment(backend), "model": settings.model, "method": settings.method,
              "model_shape": dropbp.shape.to_dict(), "drop_rate": settings.drop_rate, "allocator": settings.allocator,
              "cap": settings.cap, "seq_len": int(batch["input_ids"].shape[1]), "batch_size": settings.batch_size,
              "data": settings.data,
              "seed": settings.seed,
              "sensitivity": sensitivity.to_dict(), "drop_fraction": drop_fraction(dropbp.flops, rates),
              "branches": branches}
    if settings.compare == "exact":
        exact = sensitivity if sensitivity.method == "exact" else compute_sensitivity(
            "exact", model, dropbp, batch, seed=settings.seed, progress=True)
        result["exact"] = exact.to_dict()
        result["spearman"] = spearman(exact.values, sensitivity.values)
        for branch, value in zip(branches, exact.values):
            branch["exact_sensitivity"] = value
    dropbp.remove()
    publish(out, "allocate", result, allocation_markdown(result), allocation_figure(result))
    return 0
