"""``dropbp allocate``: per-branch sensitivities and the drop rates an allocator gives them, as a table and plot."""
from __future__ import annotations

import argparse

import torch
from pathlib import Path

from ..errors import ConfigError
from . import options

EXAMPLES = """examples:
  dropbp allocate --model tiny --method lora --drop-rate 0.875 --sensitivity fast --allocator paper
  dropbp allocate --sensitivity fast --compare exact --seed 1
  dropbp allocate --allocator optimal --cap 0.95 --out results/alloc"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``allocate`` subcommand."""
    from ..allocation import ALLOCATORS
    from ..sensitivity import SENSITIVITY_METHODS

    parser = subparsers.add_parser(
        "allocate", help="sensitivity-based drop rates per branch", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure each branch's sensitivity on a batch of text and allocate drop rates under the FLOPs "
                    "budget; print the table and write JSON + a plot of the rates per layer.")
    options.add_device(parser)
    options.add_model(parser)
    parser.add_argument("--drop-rate", type=float, default=0.875, help="target rate in [0, 1) (default: 0.875)")
    parser.add_argument("--sensitivity", default="fast", choices=SENSITIVITY_METHODS,
                        help="estimator: exact (2L+1 passes) or fast (1 pass) (default: fast)")
    parser.add_argument("--allocator", default="paper", choices=ALLOCATORS,
                        help="paper (greedy, steps of 0.1), optimal (exact minimiser of sum C p^2), uniform")
    parser.add_argument("--cap", type=float, default=0.9, help="highest rate of any branch (default: 0.9)")
    parser.add_argument("--compare", choices=("exact",), default=None,
                        help="also compute exact sensitivity; report Spearman and the cost of both")
    parser.add_argument("--seq-len", type=options.positive_int, default=256, help="tokens per sequence (256)")
    parser.add_argument("--batch-size", type=options.positive_int, default=4, help="sequences in the batch (4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the batch (default: 0)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/<device>)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate, measure, allocate, write, print."""
    import backends

    from ..allocation import allocate, check_feasible, drop_fraction, validate_drop_rate
    from ..allocation_report import allocation_figure, allocation_markdown
    from ..bench.results import environment, publish
    from ..data import batch_at, stdlib_corpus
    from ..engine import DropBP
    from ..presets import apply_method, build_model, check_fits
    from ..sensitivity import compute_sensitivity, spearman

    validate_drop_rate(args.drop_rate, "--drop-rate")
    if not 0 < args.cap < 1:
        raise ConfigError(f"--cap must be in (0, 1), got {args.cap}.")
    if args.allocator != "uniform":
        check_feasible(args.drop_rate, args.cap)
    backend = backends.get(args.device)
    out = args.out if args.out is not None else Path("results") / backend.name
    check_fits(args.model, dtype=torch.float32, method=args.method, capacity_bytes=backend.memory_capacity_bytes())
    model = apply_method(build_model(args.model, device=backend.device, seed=args.seed), args.method, seed=args.seed)
    dropbp = DropBP(model, 0.0, seed=args.seed, seq_len=args.seq_len, backend=backend)
    batch = batch_at(stdlib_corpus(1_000_000), args.seed, args.batch_size, args.seq_len, args.seed).to(backend.device)
    sensitivity = compute_sensitivity(args.sensitivity, model, dropbp, batch, seed=args.seed, progress=True)
    rates = allocate(args.allocator, dropbp.flops, sensitivity.values, args.drop_rate, cap=args.cap)
    total = sum(dropbp.flops)
    branches = [{**b.to_dict(), "flops_share": b.flops / total, "sensitivity": s, "rate": r}
                for b, s, r in zip(dropbp.branches, sensitivity.values, rates)]
    result = {"command": "allocate", **environment(backend), "model": args.model, "method": args.method,
              "model_shape": dropbp.shape.to_dict(), "drop_rate": args.drop_rate, "allocator": args.allocator,
              "cap": args.cap, "seq_len": args.seq_len, "batch_size": args.batch_size, "seed": args.seed,
              "sensitivity": sensitivity.to_dict(), "drop_fraction": drop_fraction(dropbp.flops, rates),
              "branches": branches}
    if args.compare == "exact":
        exact = sensitivity if sensitivity.method == "exact" else compute_sensitivity(
            "exact", model, dropbp, batch, seed=args.seed, progress=True)
        result["exact"] = exact.to_dict()
        result["spearman"] = spearman(exact.values, sensitivity.values)
        for branch, value in zip(branches, exact.values):
            branch["exact_sensitivity"] = value
    dropbp.remove()
    publish(out, "allocate", result, allocation_markdown(result), allocation_figure(result))
    return 0
