"""``dropbp port RECIPE --to CLUSTER``: the same workload, re-derived for other hardware, every change with its reason."""
from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  dropbp port paper/llama3-8b-lora-oasst1 --to gaudi2 -o llama3-gaudi2.yaml
  dropbp port llama3-gaudi2.yaml --to a100-80g --nodes 2 -o llama3-a100.yaml
  dropbp port paper/llama2-70b-qlora-alpaca --to h200 -o llama2-70b-h200.yaml"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``port`` subcommand."""
    from dropbp.recipes.config.clusters import cluster_names

    parser = subparsers.add_parser(
        "port", help="move a recipe to another cluster (a100-80g, h100-80g, h200, gaudi2, cpu)", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keep the workload (model, data, method, drop rate, optimiser, global batch) and re-derive the "
                    "hardware parts: micro-batch (memory model with DropBP's savings), gradient accumulation, "
                    "precision, sampler, device. Prints each change with its reason.")
    parser.add_argument("recipe", help="a recipe file or a shipped recipe's name")
    parser.add_argument("--to", required=True, choices=cluster_names(), help="target cluster profile")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the target cluster (default: 1)")
    parser.add_argument("--allow-fallback", default=None, metavar="lora,checkpointing",
                        help="changes to the workload port may make, comma-separated: lora (a QLoRA recipe moves to "
                             "hardware without 4-bit kernels as LoRA), checkpointing (activation checkpointing where "
                             "the recipe would not fit one device without it)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the ported recipe here (default: "
                                                                        "print it)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, port, print the changes, write the recipe."""
    from dropbp.recipes.config.clusters import load_cluster
    from dropbp.recipes.config.loader import dump_yaml
    from dropbp.recipes.port import port_recipe
    from dropbp.recipes.report.publish import check_regular_target, write_text_atomic
    from dropbp.recipes.config.registry import find_recipe
    from dropbp.recipes.config.schema import load_recipe
    from dropbp.recipes.report.tables import markdown_table

    path = find_recipe(args.recipe)
    recipe = load_recipe(path, for_run=False)
    if args.output is not None:
        check_regular_target("-o", args.output)
    source = load_cluster(recipe.cluster) if recipe.cluster else None
    ported, changes = port_recipe(recipe, source, load_cluster(args.to), nodes=args.nodes,
                                  allow_fallback=args.allow_fallback)
    # relative data paths are kept relative to the original recipe's folder: write them absolute
    ported = ported.with_absolute_paths() if args.output is not None else ported
    print(f"{recipe.name}: {source.name if source else 'one device'} -> {args.to} x {args.nodes} node(s)")
    print(markdown_table(["field", "was", "now", "why"], [(c.key, c.before, c.after, c.reason) for c in changes]))
    listed = "\n".join(f"#   {c.key}: {c.before} -> {c.after} ({c.reason})" for c in changes)
    text = (f"# dropbp train {args.output or '<this file>'}\n# Ported from {path} to {args.to} x {args.nodes} node(s) "
            f"by dropbp port; changes:\n{listed}\n" + dump_yaml(
                ported.to_data()))
    if args.output is None:
        print("\n" + text, end="")
        return 0
    write_text_atomic(args.output, text)
    print(f"\nwrote {args.output}")
    return 0
