"""``dropbp train RECIPE [key=value ...]``: fine-tune from a recipe, with checkpoints and exact resume."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dropbp.backends import DEVICE_CHOICES
from dropbp.core.errors import ConfigError
from dropbp.recipes.config.fields import check_output_dir

EXAMPLES = """examples:
  dropbp train tiny-tasks --device cpu
  dropbp train recipes/configs/tiny-tasks.yaml dropbp.drop_rate=0.75 optim.lr=3e-3
  dropbp train tiny-tasks train.stop_after_steps=100 --output-dir runs/a
  dropbp train tiny-tasks --output-dir runs/a --resume
  dropbp recipes ls"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="fine-tune from a recipe (YAML): LoRA, QLoRA or full, with DropBP", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune the model a recipe names on its data with DropBP; write metrics.csv, loss.png, "
                    "TensorBoard logs and checkpoints to the output folder. Every field of the recipe can be "
                    "overridden with key=value (dotted paths); docs/OPTIONS.md lists them.")
    parser.add_argument("recipe", help="a recipe file, or the name of a shipped recipe (dropbp recipes ls)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a recipe field, e.g. optim.lr=1e-4")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=None, help="device backend (default: the recipe's)")
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its newest "
                                                              "intact checkpoint")
    parser.add_argument("--allow-changed-data", action="store_true", help="with --resume: continue even though the "
                                                                          "training data changed since the run began")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load and check the recipe, then set up, train and clean up."""
    from dropbp.recipes.finetune import FineTune
    from dropbp.recipes.config.registry import find_recipe
    from dropbp.recipes.config.schema import load_recipe
    from dropbp.recipes.training.stop_signals import StopSignals

    bad = [text for text in args.overrides if "=" not in text]
    if bad:
        raise ConfigError(f"overrides must look like key=value (e.g. optim.lr=1e-4); got {', '.join(bad)}.")
    recipe = load_recipe(find_recipe(args.recipe), args.overrides, device=args.device)
    if args.output_dir is not None and not args.output_dir.strip():
        raise ConfigError("--output-dir is empty; give a folder for the run (default: runs/<recipe name>).")
    out = Path(args.output_dir) if args.output_dir is not None else Path("runs") / recipe.name
    check_output_dir("--output-dir", out)
    run_ = FineTune(recipe, out, resume=args.resume, progress=not args.quiet,
                    allow_changed_data=args.allow_changed_data)  # holds the folder's lock
    try:
        with StopSignals() as signals:
            run_.signals = signals
            run_.setup()
            try:
                summary = run_.train()
            finally:
                run_.cleanup()
    finally:
        run_.release()
    if summary["interrupted"]:
        if run_.world.is_main:
            print(f"received {summary['interrupted']}: saved a checkpoint at step {summary['steps']} of "
                  f"{summary['total_steps']}; continue with dropbp train {out / 'recipe.yaml'} --output-dir {out} "
                  "--resume", file=sys.stderr)
        return signals.exit_code if signals.received else 143  # another rank was signalled
    if not run_.world.is_main:
        return 0
    last = next((r for r in reversed(summary["rows"]) if r.get("val_loss")), None)
    first = summary["rows"][0] if summary["rows"] else None
    if first and last:
        match = (f"; exact match {float(first['exact_match']):.3f} -> {float(last['exact_match']):.3f}"
                 if first.get("exact_match") and last.get("exact_match") else "")
        print(f"validation loss {float(first['val_loss']):.4f} -> {float(last['val_loss']):.4f}{match}")
    print(summary["savings"])
    state = "finished" if summary["finished"] else f"stopped at step {summary['steps']} (resume with --resume)"
    print(f"{state}; outputs in {out} (metrics.csv, loss.png, checkpoints/, recipe.yaml)")
    return 0
