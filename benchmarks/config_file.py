"""``dropbp bench --config CONFIG.yaml [key=value ...]``: a benchmark's settings as a YAML section of the same
typed schema as the recipes. The file names the benchmark and holds its settings under that name::

    # dropbp bench --config benchmarks/configs/throughput-cpu-lora.yaml
    benchmark: throughput
    throughput:
      device: cpu
      method: lora

Unknown keys, wrong types and bad values are reported together, each by its YAML key (``memory.budget_gb``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dropbp.core.errors import ConfigError
from dropbp.recipes.for_benchmarks import Problems, apply_overrides, build, read_yaml, yaml_key

from .registry import BENCHMARKS

CONFIG_SUFFIXES = (".yaml", ".yml")


def is_config_file(text: str) -> bool:
    """Whether a command-line word names a benchmark config file."""
    return isinstance(text, str) and text.endswith(CONFIG_SUFFIXES)


def load_bench_config(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, Any]:
    """``(benchmark name, settings object)`` from a config file; one :class:`ConfigError` lists every problem."""
    problems = Problems(str(path))
    data = read_yaml(path)
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as err:
        problems.add(str(err))
    name = data.get("benchmark")
    if name not in BENCHMARKS:
        problems.add(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {name!r}.")
        problems.raise_if_any()
    for key in data:
        if key not in ("benchmark", name):
            problems.add(f"unknown key {key}; a {name} config holds only 'benchmark' and '{name}'.")
    section = data.get(name) or {}
    if not isinstance(section, dict):
        problems.add(f"{name} must be a mapping of settings, got {type(section).__name__}.")
        section = {}
    settings = build(BENCHMARKS[name][0], section, problems, name)
    if not problems.items:  # values are checked once the types are right; errors name the YAML keys
        settings.check(problems, yaml_key(name))
    problems.raise_if_any()
    return name, settings
