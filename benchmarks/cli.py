"""``dropbp bench BENCHMARK [--options]`` or ``dropbp bench --config FILE.yaml [key=value ...]``: baseline vs
DropBP side by side, with JSON, table and plot (the benchmarks are listed in :mod:`dropbp.benchmarks.registry`).

Registered with the ``dropbp`` command line through the ``dropbp.commands`` entry point. Each sub-benchmark's
options are made from the fields of its settings dataclass, and the command only parses them into that object and
calls the benchmark's ``main(settings)``, which Python callers use directly.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dropbp.core.errors import ConfigError
from dropbp.recipes.for_benchmarks import add_command

from .registry import BENCHMARKS
from .config_file import is_config_file, load_bench_config

EXAMPLES = """examples:
  dropbp bench throughput --device auto
  dropbp bench throughput --device cpu --model tiny --method full --drop-rates 0.5,0.75,0.875
  dropbp bench throughput --device cuda --model llama2-7b --method lora --seq-len 512 --batch-size 1
  dropbp bench memory --device cpu --budget-gb 2
  dropbp bench convergence --out results/cpu
  dropbp bench regime --out benchmarks/results/cpu
  dropbp bench recipe-time --recipe tiny-tasks --seeds 0 --curve-every 100
  dropbp bench compiles --device cpu --steps 200
  dropbp bench compare results/a100 results/gaudi2 --out results/compare
  dropbp selfcheck --device cuda
  dropbp bench --config benchmarks/configs/throughput-cpu-lora.yaml throughput.steps=5"""

def _runner(main: Callable[..., dict[str, Any]]) -> Callable[[Any, argparse.Namespace], int]:
    def run(settings: Any, args: argparse.Namespace) -> int:
        main(settings, progress=not args.quiet)
        return 0

    return run


def _run_config(args: argparse.Namespace) -> int:
    if not args.config:
        raise ConfigError(f"dropbp bench needs a BENCHMARK ({', '.join(BENCHMARKS)}) or --config FILE.yaml "
                          "[key=value ...].")
    path, *overrides = args.config
    if not is_config_file(path):
        raise ConfigError(f"--config must name a YAML file (.yaml or .yml) first, then key=value overrides; got "
                          f"{path!r}.")
    name, settings = load_bench_config(path, overrides)
    BENCHMARKS[name][1](settings, progress=not args.quiet)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its sub-benchmarks."""
    bench = subparsers.add_parser("bench", help=f"benchmarks: {', '.join(BENCHMARKS)}, or --config FILE.yaml",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Compare the unwrapped baseline with DropBP on this machine.")
    bench.add_argument("--config", nargs="+", metavar=("FILE.yaml", "key=value"), default=None,
                       help="run a benchmark config file (benchmarks/configs/), each key=value after it overriding a "
                            "setting, e.g. throughput.steps=5")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=_run_config)
    kinds = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, (settings_class, main, help_text) in BENCHMARKS.items():
        parser = add_command(kinds, name, settings_class, _runner(main), help=help_text, epilog=EXAMPLES,
                             description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register_selfcheck(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dropbp selfcheck`` (the same as ``dropbp bench selfcheck``)."""
    settings_class, main, help_text = BENCHMARKS["selfcheck"]
    parser = add_command(subparsers, "selfcheck", settings_class, _runner(main), help=help_text,
                         epilog="examples:\n  dropbp selfcheck --device cuda\n  dropbp selfcheck --device hpu\n"
                                "  dropbp selfcheck --device cpu --steps 3",
                         description=help_text[0].upper() + help_text[1:] + ".")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
