"""``dropbp train RECIPE [key=value ...]``: fine-tune from a recipe, with checkpoints and exact resume."""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from dropbp.backends import DEVICE_CHOICES
from dropbp.core.errors import ConfigError
from dropbp.recipes.config.fields import check_output_dir

EXAMPLES = """examples:
  dropbp train tiny-tasks --device cpu
  dropbp train recipes/configs/tiny-tasks.yaml dropbp.drop_rate=0.75 optim.lr=3e-3
  dropbp train tiny-tasks train.stop_after_steps=100 --output-dir runs/a
  dropbp train tiny-tasks --output-dir runs/a --resume
  dropbp train tiny-tasks --device cpu dropbp.advise=true dropbp.advise_budget=1
  dropbp recipes ls"""

#: Where ``dropbp.advise`` finds the probe: ``dropbp advise`` lives in the benchmarks layer above this one and
#: declares itself in this entry-point group of the installed distribution, so this layer never imports it.
ADVISOR_GROUP = "dropbp.advisors"


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
    advice = None
    if recipe.dropbp.advise:
        keys, advice = advised_keys(args, recipe, out)
        recipe = load_recipe(find_recipe(args.recipe), [*args.overrides, *keys, "dropbp.advise=false"],
                             device=args.device)
    run_ = FineTune(recipe, out, resume=args.resume, progress=not args.quiet,
                    allow_changed_data=args.allow_changed_data)  # holds the folder's lock
    if advice is not None:  # the probe's files, into the run folder now that the run holds it
        shutil.rmtree(out / "advise", ignore_errors=True)
        shutil.move(str(advice), out / "advise")
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


def advisor() -> Any:
    """The probe ``dropbp.advise`` runs (``dropbp advise``'s, from the installed benchmarks layer)."""
    found = {entry.name: entry for entry in importlib.metadata.entry_points(group=ADVISOR_GROUP)}
    if "advise" not in found:
        raise ConfigError("dropbp.advise needs dropbp advise's probe, which is not installed with this copy of dropbp "
                          "(the dropbp.advisors entry point); reinstall dropbp, or run dropbp advise RECIPE yourself "
                          "and pass the keys it prints.")
    return found["advise"].load()


def advised_keys(args: argparse.Namespace, recipe: Any, out: Path) -> tuple[list[str], Path]:
    """Run the probe on the recipe as this run will train it; the recipe keys it recommends (none: DropBP off) and
    the folder (outside the run folder, moved into it once the run holds it) where it wrote its advice."""
    if args.resume:
        raise ConfigError(f"dropbp.advise probes before a new run, not on --resume: resume from the run's own recipe, "
                          f"which holds the advised keys: dropbp train {out / 'recipe.yaml'} --output-dir {out} "
                          "--resume.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("dropbp.advise probes on one process; with several, run dropbp advise RECIPE first and pass "
                          "the keys it prints (or leave DropBP off).")
    staging = Path(tempfile.mkdtemp(prefix="dropbp-advise-"))
    try:
        keys = advisor()(args.recipe, list(args.overrides), recipe.device, recipe.dropbp.advise_budget, staging,
                         progress=not args.quiet)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    chosen = " ".join(keys) if keys else "DropBP off"
    print(f"dropbp.advise: training with {chosen} (the probe's advice: {out / 'advise'})", file=sys.stderr, flush=True)
    return keys or ["dropbp.drop_rate=0"], staging
