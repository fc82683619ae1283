"""Command-line options shared by several subcommands, with their allowed values."""
from __future__ import annotations

import argparse


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|hpu``."""
    from backends import DEVICE_CHOICES

    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="device backend; auto picks hpu > cuda > cpu (default: auto)")


def add_model(parser: argparse.ArgumentParser, default: str = "tiny") -> None:
    """``--model`` and ``--method``; ``default="auto"`` means tiny on the CPU and llama2-7b on an accelerator."""
    from ..presets import METHODS, PRESETS

    auto = " (auto: tiny on the CPU, llama2-7b on a GPU or Gaudi)" if default == "auto" else ""
    parser.add_argument("--model", default=default,
                        help=f"model preset ({', '.join(PRESETS)}; random weights) or a local path or hub name "
                             f"(default: {default}){auto}")
    parser.add_argument("--method", default="lora", choices=METHODS, help="fine-tuning method (default: lora)")


def add_sampler(parser: argparse.ArgumentParser) -> None:
    """``--sampler`` and ``--pool-size``."""
    from ..samplers import SAMPLERS

    parser.add_argument("--sampler", default="auto", choices=("auto", *SAMPLERS),
                        help="drop sampler; auto = the device's default: pool on hpu (every new mask is a new "
                             "compiled graph there), bernoulli elsewhere (default: auto)")
    parser.add_argument("--pool-size", type=int, default=8, help="masks in the pool sampler (default: 8)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def resolve_sampler(name: str, backend: object) -> str:
    """'auto' -> the backend's default sampler; any other name is returned unchanged."""
    return getattr(backend, "default_sampler", "bernoulli") if name == "auto" else name


def resolve_model(name: str, backend: object) -> str:
    """'auto' -> 'tiny' on the CPU (compute-bound there in about a second a step), 'llama2-7b' elsewhere (the
    paper's shape: a tiny model on an accelerator measures kernel-launch overhead, not DropBP)."""
    if name != "auto":
        return name
    return "tiny" if getattr(backend, "name", "cpu") == "cpu" else "llama2-7b"
