"""What every benchmark shares: the settings every run has (device, seed, results folder), and one runner that
validates, measures on the chosen backend and publishes the JSON, Markdown and PNG."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dropbp import backends
from dropbp.backends import Backend
from dropbp.recipes import (Naming, Problems, check_choice, check_output_dir, check_seed, device_field,
                            option_name, out_field, publish, results_folder, seed_field)

S = TypeVar("S", bound="BenchSettings")


@dataclasses.dataclass
class BenchSettings:
    """Fields every benchmark has. Subclasses add their own and extend :meth:`check` / :meth:`resolve`."""

    device: str = device_field()
    seed: int = seed_field()
    out: Path | None = out_field()

    def check(self, p: Problems, name: Naming = option_name) -> None:
        """Record every problem of these settings in ``p``; ``name`` says how errors call a field (its flag on the
        command line, its key in a YAML file). Subclasses extend it. Bad numbers of a field are normalised here
        (e.g. drop rates become a tuple of floats)."""
        p.check(check_choice, name("device"), self.device, backends.DEVICE_CHOICES)
        p.check(check_seed, self.seed, name("seed"))
        p.check(check_output_dir, name("out"), self.out if self.out is not None else Path("results"))

    def validate(self, name: Naming = option_name) -> None:
        """Raise one :class:`ConfigError` listing every problem; called before any work starts."""
        problems = Problems("")
        self.check(problems, name)
        problems.raise_if_any()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field (paths as strings), recorded in each result."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    def resolve(self: S, backend: type[Backend]) -> S:
        """A copy with every ``auto`` value replaced by what it means on ``backend``."""
        return dataclasses.replace(self)

    def results_dir(self, backend_name: str) -> Path:
        """``out``, or ``results/<device>``; refused when it cannot hold results."""
        return results_folder(self.out, backend_name)


def run_benchmark(name: str, settings: S, measure: Callable[..., dict[str, Any]],
                  markdown: Callable[[dict[str, Any]], str], figure: Callable[[dict[str, Any]], Any], *,
                  progress: bool = True) -> dict[str, Any]:
    """Validate ``settings``, pick the backend, ``measure(settings, backend, progress=...)``, then write
    ``NAME.json``, ``NAME.md`` and ``NAME.png`` under the results folder and print the table. Returns the result."""
    settings.validate()
    backend_class = backends.resolve(settings.device)
    settings = settings.resolve(backend_class)
    settings.validate()
    out = settings.results_dir(backend_class.name)
    backend = backend_class()
    result = measure(settings, backend, progress=progress)
    publish(out, name, result, markdown(result), figure(result))
    return result
