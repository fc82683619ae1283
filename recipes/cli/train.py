"""``dropbp train``: a short DropBP fine-tuning run on the standard library's source text, printing losses and rates."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from dropbp import backends
from dropbp.core.allocation import validate_drop_rate
from dropbp.core.engine import DropBP
from dropbp.core.schedule import ALLOCATION_MODES, AllocationSchedule
from dropbp.core.sensitivity import SENSITIVITY_METHODS
from dropbp.recipes.data import batch_at, stdlib_corpus
from dropbp.core.samplers import SAMPLERS
from dropbp.recipes.presets import check_method, apply_method, build_model, check_fits, check_model, check_seq_len
from dropbp.recipes.settings_fields import (add_command, check_choice, check_number, check_positive, check_seed,
                                            setting)
from dropbp.recipes.tables import markdown_table
from dropbp.recipes.training import train

from .options import (device_field, method_field, model_field, pool_size_field, resolve_sampler, sampler_field,
                      seed_field)

EXAMPLES = """examples:
  dropbp train
  dropbp train --device cpu --method full --drop-rate 0.875 --steps 50
  dropbp train --sampler pool --pool-size 8"""


@dataclass
class TrainSettings:
    """A short training run: model, method, DropBP settings, optimisation and the allocation schedule."""

    device: str = device_field()
    model: str = model_field("tiny")
    method: str = method_field()
    sampler: str = sampler_field()
    pool_size: int = pool_size_field()
    drop_rate: float = setting(0.75, "average drop rate in [0, 1)")
    steps: int = setting(30, "training steps")
    batch_size: int = setting(4, "sequences per step")
    seq_len: int = setting(128, "tokens per sequence")
    lr: float = setting(1e-3, "AdamW learning rate")
    seed: int = seed_field()
    allocation: str = setting("uniform", "uniform rates; sensitivity-based rates from --allocate-at of training; or "
                                         "online (refreshed from ordinary steps every --reallocate-every steps)",
                              choices=ALLOCATION_MODES)
    sensitivity: str = setting("fast", "estimator for --allocation sensitivity", choices=SENSITIVITY_METHODS)
    allocator: str = setting("paper", "allocator for sensitivity-based rates", choices=("paper", "optimal"))
    allocate_at: float = setting(0.1, "fraction of training at which sensitivities are measured (0.1, as the paper)")
    reallocate_every: int = setting(50, "steps between re-allocations with --allocation online")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field, before anything is built."""
        check_choice("--device", self.device, backends.DEVICE_CHOICES)
        check_model(self.model)
        check_method(self.method)
        check_choice("--sampler", self.sampler, ("auto", *SAMPLERS))
        validate_drop_rate(self.drop_rate, "--drop-rate")
        check_positive(self, "steps", "batch_size", "seq_len", "pool_size", "reallocate_every")
        check_number("--lr", self.lr, low=0, low_open=True)
        check_seed(self.seed)
        check_choice("--allocation", self.allocation, ALLOCATION_MODES)
        check_choice("--sensitivity", self.sensitivity, SENSITIVITY_METHODS)
        check_choice("--allocator", self.allocator, ("paper", "optimal"))
        check_number("--allocate-at", self.allocate_at, low=0, high=1, high_open=True)
        check_seq_len(self.model, self.seq_len)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    add_command(subparsers, "train", TrainSettings, lambda settings, args: run(settings),
                help="short DropBP training run on a built-in model (no download)", epilog=EXAMPLES,
                description="Fine-tune a model with DropBP on the Python standard library's source (byte tokens) and "
                            "print the losses and the drop rates realised.")


def run(settings: TrainSettings) -> int:
    """Build, wrap, train, report."""
    settings.validate()
    backend = backends.get(settings.device)
    check_fits(settings.model, dtype=torch.float32, method=settings.method,
               capacity_bytes=backend.memory_capacity_bytes())
    model = apply_method(build_model(settings.model, device=backend.device, seed=settings.seed), settings.method,
                         seed=settings.seed)
    dropbp = DropBP(model, settings.drop_rate, sampler=resolve_sampler(settings.sampler, backend),
                    pool_size=settings.pool_size, seed=settings.seed, seq_len=settings.seq_len)
    tokens = stdlib_corpus(2_000_000)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    print(f"{dropbp!r} on {backend.device_name()} ({backend.name}), method={settings.method}")
    schedule = AllocationSchedule(model, dropbp, mode=settings.allocation, drop_rate=settings.drop_rate,
                                  total_steps=settings.steps, allocate_at=settings.allocate_at,
                                  sensitivity=settings.sensitivity, allocator=settings.allocator,
                                  every=settings.reallocate_every, seed=settings.seed)
    losses = train(model, lambda step: batch_at(tokens, step, settings.batch_size, settings.seq_len, settings.seed),
                   optimizer, dropbp, backend, settings.steps, desc="dropbp train", schedule=schedule)
    schedule.close()
    for event in schedule.events:
        print(f"step {event['step']}: rates re-allocated from sensitivities ({settings.allocator}), "
              f"FLOPs-weighted drop fraction {event['drop_fraction']:.3f}")
    every = max(1, len(losses) // 10)
    print(markdown_table(["step", "loss"], [(i, losses[i]) for i in range(0, len(losses), every)] +
                         ([(len(losses) - 1, losses[-1])] if (len(losses) - 1) % every else [])))
    report = dropbp.report()
    print(f"\nrealised drop fraction (FLOPs-weighted): {report['realized_drop_fraction']:.3f} "
          f"(asked {report['asked_drop_fraction']:.3f}) over {report['steps']} steps; "
          f"all-dropped steps: {report['all_dropped_steps']}")
    print(markdown_table(["branch", "kind", "layer", "asked", "realised"],
                         [(b["name"], b["kind"], b["layer"], b["asked_rate"], b["realized_rate"])
                          for b in report["branches"]]))
    return 0
