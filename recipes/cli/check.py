"""``dropbp check MODEL``: the branches DropBP finds on a model, and whether it is exact there (exit 0 exact, 1 not)."""
from __future__ import annotations

import argparse
import time

from dropbp.core.checks import check_int
from dropbp.recipes.report.tables import markdown_table

EXAMPLES = """examples:
  dropbp check tiny
  dropbp check llama2-7b
  dropbp check path/to/a/model/folder --layers 3
  DROPBP_ALLOW_DOWNLOADS=1 dropbp check hf:google/gemma-2-2b"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` subcommand."""
    parser = subparsers.add_parser(
        "check", help="list the branches DropBP finds on a model and check that its gradients are exact there",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find the residual branches of MODEL (a preset, a local folder, or hf:org/name with downloads "
                    "allowed) with no names given, list them with their FLOPs share, then build a random copy of "
                    "a few layers and compare every parameter's gradient under three masks with a reference where "
                    "each dropped branch returns a constant (full fine-tuning and LoRA). Only the config is read: "
                    "no weights are loaded. Exit code 0: exact; 1: not exact, or no branches found; 2: bad input.")
    parser.add_argument("model", metavar="MODEL", help="a preset (dropbp recipes ls shows them), a folder, or hf:org/name")
    parser.add_argument("--layers", type=int, default=2, help="blocks in the random copy that is checked (default 2)")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per sequence of the check's batch (default 16)")
    parser.add_argument("--methods", default="full,lora", help="comma-separated: full, lora (default both)")
    parser.add_argument("--attn", default=None, help="attention module name (default: found by structure)")
    parser.add_argument("--mlp", default=None, help="MLP module name (default: found by structure)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, masks and batch")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the model and print the branch table, each mask's result and a verdict."""
    from dropbp.core.errors import ConfigError
    from dropbp.recipes.model.check_model import branch_rows, check

    check_int("--layers", args.layers, 1)
    check_int("--seq-len", args.seq_len, 2)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods or any(m not in ("full", "lora") for m in methods):
        raise ConfigError(f"--methods must list full and/or lora (comma-separated), got {args.methods!r}.")
    names = {k: v for k, v in (("attn", args.attn), ("mlp", args.mlp)) if v}
    start = time.perf_counter()
    result = check(args.model, layers=args.layers, seq_len=args.seq_len, methods=methods, seed=args.seed, **names)
    print(f"{args.model}: {result.architecture} ({result.model_type}), {result.blocks} blocks")
    if result.refused:
        print(f"refused: {result.refused}")
        print("verdict: DropBP cannot be applied to this model as it is; name the branches with --attn/--mlp.")
        return 1
    found = result.found
    shapes = sorted(set(found.block_shapes.values())) or ["named by hand"]
    print(f"branches: {len(found.branches)}, block shape: {', '.join(shapes)}, FLOPs per token at seq {args.seq_len}")
    print(markdown_table(["kind", "module", "class", "branches", "FLOPs share"], branch_rows(found)))
    print(f"outside every branch: {', '.join(result.outside) or 'nothing'} (a pre-norm gets no gradient while the "
          "branch it feeds is dropped; the rest trains as usual)")
    print(f"\nexactness on a random {result.layers_checked}-layer copy (vocabulary at most 4096; the blocks keep the "
          f"model's widths), batch 2 x {args.seq_len}, every trainable parameter's gradient against the reference:")
    rows = []
    for method, checks in result.results.items():
        for number, item in enumerate(checks, 1):
            dropped = sum(item.mask)
            verdict = ("exact" if item.exact and item.max_abs_diff == 0 else
                       f"exact within tolerance (max |diff| {item.max_abs_diff:.2e})" if item.exact else
                       f"NOT exact: {len(item.leaked)} leaked, {len(item.mismatched)} differ"
                       + (f" (e.g. {(item.leaked + item.mismatched)[0]})" if item.leaked or item.mismatched else "")
                       + ("" if item.loss_equal else ", loss differs"))
            rows.append((method, f"{number}: {dropped} of {len(item.mask)} dropped", verdict))
    print(markdown_table(["method", "mask", "result"], rows))
    total = sum(len(c) for c in result.results.values())
    passed = sum(c.exact for checks in result.results.values() for c in checks)
    elapsed = time.perf_counter() - start
    if result.exact:
        print(f"verdict: DropBP is exact on this model ({passed} of {total} checks, {elapsed:.0f} s).")
        return 0
    print(f"verdict: DropBP is NOT exact on this model ({passed} of {total} checks passed, {elapsed:.0f} s); "
          "please report it with this output.")
    return 1
