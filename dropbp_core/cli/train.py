"""``dropbp train``: a short DropBP fine-tuning run on the standard library's source text, printing losses and rates."""
from __future__ import annotations

import argparse

import torch

from ..data import batch_at, stdlib_corpus
from ..allocation import validate_drop_rate
from ..engine import DropBP
from ..presets import apply_method, build_model, check_fits
from ..schedule import ALLOCATION_MODES, AllocationSchedule
from ..sensitivity import SENSITIVITY_METHODS
from ..tables import markdown_table
from ..training import train
from . import options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="short DropBP training run on a built-in model (no download)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a model with DropBP on the Python standard library's source (byte tokens) and print "
                    "the losses and the drop rates realised.",
        epilog="examples:\n  dropbp train\n  dropbp train --device cpu --method full --drop-rate 0.875 --steps 50\n"
               "  dropbp train --sampler pool --pool-size 8",
    )
    options.add_device(parser)
    options.add_model(parser)
    options.add_sampler(parser)
    parser.add_argument("--drop-rate", type=float, default=0.75, help="average drop rate in [0, 1) (default: 0.75)")
    parser.add_argument("--steps", type=options.positive_int, default=30, help="training steps (default: 30)")
    parser.add_argument("--batch-size", type=options.positive_int, default=4, help="sequences per step (default: 4)")
    parser.add_argument("--seq-len", type=options.positive_int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model, the data and the masks (default: 0)")
    parser.add_argument("--allocation", default="uniform", choices=ALLOCATION_MODES,
                        help="uniform rates; sensitivity-based rates from --allocate-at of training; or online "
                             "(refreshed from ordinary steps every --reallocate-every steps) (default: uniform)")
    parser.add_argument("--sensitivity", default="fast", choices=SENSITIVITY_METHODS,
                        help="estimator for --allocation sensitivity (default: fast)")
    parser.add_argument("--allocator", default="paper", choices=("paper", "optimal"),
                        help="allocator for sensitivity-based rates (default: paper)")
    parser.add_argument("--allocate-at", type=float, default=0.1,
                        help="fraction of training at which sensitivities are measured (default: 0.1, as the paper)")
    parser.add_argument("--reallocate-every", type=options.positive_int, default=50,
                        help="steps between re-allocations with --allocation online (default: 50)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build, wrap, train, report."""
    import backends

    validate_drop_rate(args.drop_rate, "--drop-rate")
    backend = backends.get(args.device)
    check_fits(args.model, dtype=torch.float32, method=args.method, capacity_bytes=backend.memory_capacity_bytes())
    model = apply_method(build_model(args.model, device=backend.device, seed=args.seed), args.method, seed=args.seed)
    sampler = options.resolve_sampler(args.sampler, backend)
    dropbp = DropBP(model, args.drop_rate, sampler=sampler, pool_size=args.pool_size, seed=args.seed,
                    seq_len=args.seq_len, backend=backend)
    tokens = stdlib_corpus(2_000_000)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    print(f"{dropbp!r} on {backend.device_name()} ({backend.name}), method={args.method}")
    schedule = AllocationSchedule(model, dropbp, mode=args.allocation, drop_rate=args.drop_rate,
                                  total_steps=args.steps, allocate_at=args.allocate_at, sensitivity=args.sensitivity,
                                  allocator=args.allocator, every=args.reallocate_every, seed=args.seed)
    losses = train(model, lambda step: batch_at(tokens, step, args.batch_size, args.seq_len, args.seed), optimizer,
                   dropbp, backend, args.steps, desc="dropbp train", schedule=schedule)
    schedule.close()
    for event in schedule.events:
        print(f"step {event['step']}: rates re-allocated from sensitivities ({args.allocator}), "
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
