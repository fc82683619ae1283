"""``dropbp bench throughput|memory|convergence|compiles``: baseline vs DropBP side by side, with JSON, table and plot.

Registered with the ``dropbp`` command line through the ``dropbp.commands`` entry point. Each sub-benchmark's
options are made from the fields of its settings dataclass, and the command only parses them into that object and
calls the benchmark's ``main(settings)``, which Python callers use directly.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dropbp.recipes.settings_fields import add_command

from . import compiles, convergence, memory_search, throughput

EXAMPLES = """examples:
  dropbp bench throughput --device auto
  dropbp bench throughput --device cpu --model tiny --method full --drop-rates 0.5,0.75,0.875
  dropbp bench throughput --device cuda --model llama2-7b --method lora --seq-len 512 --batch-size 1
  dropbp bench memory --device cpu --budget-gb 2
  dropbp bench convergence --out results/cpu
  dropbp bench compiles --device cpu --steps 200"""

#: name -> (settings class, main function, one-line help)
BENCHMARKS: dict[str, tuple[type, Callable[..., dict[str, Any]], str]] = {
    "throughput": (throughput.ThroughputSettings, throughput.main,
                   "step time, tokens/s, efficiency vs the linear limit"),
    "memory": (memory_search.MemorySettings, memory_search.main,
               "longest sequence that fits a memory budget, per drop rate"),
    "convergence": (convergence.ConvergenceSettings, convergence.main,
                    "validation loss vs FLOPs and wall time on real text"),
    "compiles": (compiles.CompilesSettings, compiles.main,
                 "graphs torch.compile builds over training: pool vs bernoulli"),
}


def _runner(main: Callable[..., dict[str, Any]]) -> Callable[[Any, argparse.Namespace], int]:
    def run(settings: Any, args: argparse.Namespace) -> int:
        main(settings, progress=not args.quiet)
        return 0

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its sub-benchmarks."""
    bench = subparsers.add_parser("bench", help="benchmarks: throughput, memory, convergence, compiles",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Compare the unwrapped baseline with DropBP on this machine.")
    kinds = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (settings_class, main, help_text) in BENCHMARKS.items():
        parser = add_command(kinds, name, settings_class, _runner(main), help=help_text, epilog=EXAMPLES,
                             description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
