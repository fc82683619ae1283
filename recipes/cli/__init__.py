"""The ``dropbp`` command line: one small module per subcommand; bad input exits with code 2 and one paragraph.

Subcommands from higher layers (``dropbp bench`` lives in ``dropbp.benchmarks``) are found through the
``dropbp.commands`` entry-point group of the installed distribution, so this layer never imports them.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
import warnings
from collections.abc import Callable, Sequence

from dropbp.core.errors import DropBPError

from . import allocate, check, data_command, env, port, recipes_command, train

#: Subcommands this layer owns, in the order ``--help`` lists them.
SUBCOMMANDS = (train, recipes_command, data_command, port, allocate, check, env)
COMMAND_GROUP = "dropbp.commands"


def plugin_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """``register`` functions of the subcommands other packages (our benchmarks layer) declare, sorted by name."""
    found = importlib.metadata.entry_points(group=COMMAND_GROUP)
    return [entry.load() for entry in sorted(found, key=lambda e: e.name)]


def build_parser(extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()
                 ) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered: this layer's, the installed plugins', and
    ``extra_commands`` (for running from a source tree that is not installed; duplicates are registered once)."""
    parser = argparse.ArgumentParser(
        prog="dropbp",
        description="DropBP: faster, lighter LLM fine-tuning by dropping backward propagation of residual branches.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  dropbp train tiny-tasks --device cpu dropbp.drop_rate=0.75\n  dropbp recipes ls\n"
               "  dropbp bench throughput --device auto\n  dropbp env",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    for register in dict.fromkeys([*plugin_commands(), *extra_commands]):
        register(subparsers)
    return parser


def parse(argv: Sequence[str] | None = None,
          extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.Namespace:
    """The parsed command line (argparse exits with code 2 and a usage line on bad input). ``key=value`` overrides
    may also come after options (``train RECIPE --device cpu a.b=1``), which argparse alone leaves over."""
    parser = build_parser(extra_commands)
    args, extra = parser.parse_known_args(argv)
    if isinstance(getattr(args, "overrides", None), list):  # a recipe's key=value list (a settings field may be a tuple)
        args.overrides += [text for text in extra if "=" in text and not text.startswith("-")]
        extra = [text for text in extra if text not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None,
         extra_commands: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> int:
    """Entry point of the ``dropbp`` console script."""
    # peft calls a transformers property that transformers 5 deprecates; it says nothing to a dropbp user
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = parse(argv, extra_commands)
    try:
        return int(args.run(args) or 0)
    except DropBPError as err:
        print(f"dropbp {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"dropbp {args.command}: interrupted.", file=sys.stderr)
        return 130
