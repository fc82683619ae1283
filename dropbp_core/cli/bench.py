"""``dropbp bench throughput|memory|convergence``: baseline vs DropBP side by side, with JSON, table and plot."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from . import options

EXAMPLES = """examples:
  dropbp bench throughput --device auto
  dropbp bench throughput --device cpu --model tiny --method full --drop-rates 0.5,0.75,0.875
  dropbp bench throughput --device cuda --model llama2-7b --method lora --seq-len 512 --batch-size 1
  dropbp bench memory --device cpu --budget-gb 2
  dropbp bench convergence --out results/cpu"""


def drop_rate_list(text: str) -> tuple[float, ...]:
    """argparse type for ``--drop-rates 0.5,0.75,0.875``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in [0, 1) such as 0.5,0.75,0.875, got {text!r}") from None


def _common(parser: argparse.ArgumentParser, *, rates: str = "0.5,0.75,0.875", model: str = "auto") -> None:
    options.add_device(parser)
    options.add_model(parser, default=model)
    options.add_sampler(parser)
    parser.add_argument("--drop-rates", type=drop_rate_list, default=drop_rate_list(rates),
                        help=f"drop rates to compare, comma-separated, each in [0, 1) (default: {rates})")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="model dtype; auto = fp32 on the CPU, bf16 elsewhere (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data and masks (default: 0)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/<device>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its three sub-benchmarks."""
    bench = subparsers.add_parser("bench", help="benchmarks: throughput, memory, convergence", epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Compare the unwrapped baseline with DropBP on this machine.")
    kinds = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    throughput = kinds.add_parser("throughput", help="step time, tokens/s, efficiency vs the linear limit",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(throughput)
    throughput.add_argument("--seq-len", type=options.positive_int, default=512, help="tokens per sequence (512)")
    throughput.add_argument("--batch-size", type=options.positive_int, default=2, help="sequences per step (2)")
    throughput.add_argument("--warmup", type=int, default=2, help="warm-up rounds, not timed (default: 2)")
    throughput.add_argument("--steps", type=options.positive_int, default=20, help="measured rounds (default: 20)")
    throughput.add_argument("--compile", action="store_true", help="torch.compile the model; report graph compiles")
    throughput.set_defaults(run=run_throughput)

    memory = kinds.add_parser("memory", help="longest sequence that fits a memory budget, per drop rate",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(memory)
    memory.add_argument("--budget-gb", type=float, default=None,
                        help="CPU only: budget in GiB for weights + saved activations (default: 1)")
    memory.add_argument("--batch-size", type=options.positive_int, default=1, help="sequences per step (1)")
    memory.add_argument("--max-seq-len", type=options.positive_int, default=65536,
                        help="upper end of the search (default: 65536)")
    memory.set_defaults(run=run_memory)

    convergence = kinds.add_parser("convergence", help="validation loss vs FLOPs and wall time on real text",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(convergence, model="tiny")
    convergence.add_argument("--steps", type=options.positive_int, default=None,
                             help="fine-tuning steps per run (default: preset's)")
    convergence.set_defaults(run=run_convergence, method="full")
    compiles = kinds.add_parser("compiles", help="graphs torch.compile builds over training: pool vs bernoulli",
                                epilog="example:\n  dropbp bench compiles --device cpu --steps 200",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_device(compiles)
    compiles.add_argument("--method", default="lora", choices=("full", "lora"), help="fine-tuning method (lora)")
    compiles.add_argument("--drop-rate", type=float, default=0.75, help="drop rate in [0, 1) (default: 0.75)")
    compiles.add_argument("--pool-size", type=options.positive_int, default=8, help="pool sampler's K (default: 8)")
    compiles.add_argument("--steps", type=options.positive_int, default=200, help="training steps (default: 200)")
    compiles.add_argument("--compile-backend", default="aot_eager",
                          help="dynamo backend; aot_eager traces forward and backward without code generation, "
                               "inductor also generates kernels (slow on the CPU) (default: aot_eager)")
    compiles.add_argument("--out", type=Path, default=None, help="results folder (default: results/<device>)")
    compiles.add_argument("--quiet", action="store_true", help="no progress bar")
    compiles.set_defaults(run=run_compiles)
    bench.set_defaults(run=None)


def _out_dir(args: argparse.Namespace, backend_name: str) -> Path:
    out = args.out if args.out is not None else Path("results") / backend_name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; give a folder for the results.")
    return out


def run_throughput(args: argparse.Namespace) -> int:
    """Validate, measure, write JSON + Markdown + PNG, print the table."""
    import backends

    from ..bench.results import publish
    from ..bench.throughput import ThroughputSettings, run_throughput as measure
    from ..bench.throughput_report import throughput_figure, throughput_markdown

    backend_class = backends.resolve(args.device)
    settings = ThroughputSettings(model=options.resolve_model(args.model, backend_class), method=args.method,
                                  drop_rates=args.drop_rates,
                                  seq_len=args.seq_len, batch_size=args.batch_size, warmup=args.warmup,
                                  steps=args.steps, sampler=options.resolve_sampler(args.sampler, backend_class),
                                  pool_size=args.pool_size, compile=args.compile, precision=args.precision,
                                  seed=args.seed)
    settings.validate()
    backend = backend_class()
    out = _out_dir(args, backend.name)
    result = measure(settings, backend, progress=not args.quiet)
    publish(out, "throughput", result, throughput_markdown(result), throughput_figure(result))
    return 0


def run_memory(args: argparse.Namespace) -> int:
    """Bisection for the longest sequence per drop rate."""
    from ..bench.memory_search import main as memory_main

    return memory_main(args, _out_dir)


def run_convergence(args: argparse.Namespace) -> int:
    """Validation loss against FLOPs and wall time."""
    from ..bench.convergence import main as convergence_main

    return convergence_main(args, _out_dir)


def run_compiles(args: argparse.Namespace) -> int:
    """Graphs compiled over training, pool vs bernoulli."""
    from ..bench.compiles import main as compiles_main

    return compiles_main(args, _out_dir)
