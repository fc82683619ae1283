"""``dropbp bench throughput|memory|convergence|regime|compiles|compare``: baseline vs DropBP side by side, with
JSON, table and plot.

Registered with the ``dropbp`` command line through the ``dropbp.commands`` entry point. Each sub-benchmark's
options are made from the fields of its settings dataclass, and the command only parses them into that object and
calls the benchmark's ``main(settings)``, which Python callers use directly.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dropbp.recipes.config.fields import add_command

from .registry import BENCHMARKS
from .config_file import is_config_file, load_bench_config

EXAMPLES = """examples:
  dropbp bench throughput --device auto
  dropbp bench throughput --device cpu --model tiny --method full --drop-rates 0.5,0.75,0.875
  dropbp bench throughput --device cuda --model llama2-7b --method lora --seq-len 512 --batch-size 1
  dropbp bench memory --device cpu --budget-gb 2
  dropbp bench convergence --out results/cpu
  dropbp bench regime --out benchmarks/results/cpu
  dropbp bench compiles --device cpu --steps 200
  dropbp bench compare results/a100 results/gaudi2 --out results/compare
  dropbp bench benchmarks/configs/throughput-cpu-lora.yaml throughput.steps=5"""

def _runner(main: Callable[..., dict[str, Any]]) -> Callable[[Any, argparse.Namespace], int]:
    def run(settings: Any, args: argparse.Namespace) -> int:
        main(settings, progress=not args.quiet)
        return 0

    return run


class _RoutesConfigFiles(dict):
    """The sub-benchmark table, which also sends ``dropbp bench FILE.yaml`` to the config-file runner."""

    def __init__(self, table: dict[str, argparse.ArgumentParser], config: argparse.ArgumentParser) -> None:
        super().__init__(table)
        self.config = config

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or is_config_file(key)  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> argparse.ArgumentParser:
        return self.config if is_config_file(key) and not super().__contains__(key) else super().__getitem__(key)


def _run_config(args: argparse.Namespace) -> int:
    name, settings = load_bench_config(args.benchmark, args.overrides)
    BENCHMARKS[name][1](settings, progress=not args.quiet)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its sub-benchmarks."""
    bench = subparsers.add_parser("bench", help="benchmarks: throughput, memory, convergence, compiles, or a "
                                                "config file (CONFIG.yaml)",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Compare the unwrapped baseline with DropBP on this machine.")
    kinds = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (settings_class, main, help_text) in BENCHMARKS.items():
        parser = add_command(kinds, name, settings_class, _runner(main), help=help_text, epilog=EXAMPLES,
                             description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
    config = argparse.ArgumentParser(prog="dropbp bench CONFIG.yaml", description="run a benchmark config file")
    config.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting, e.g. throughput.steps=5")
    config.add_argument("--quiet", action="store_true", help="no progress bar")
    config.set_defaults(run=_run_config)
    kinds.choices = kinds._name_parser_map = _RoutesConfigFiles(kinds._name_parser_map, config)
