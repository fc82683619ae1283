"""What every benchmark shares: the settings every run has (device, seed, results folder), and one runner that
validates, measures on the chosen backend and publishes the JSON, Markdown and PNG."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dropbp import backends
from dropbp.backends import Backend
from dropbp.recipes import (check_choice, check_output_dir, check_seed, device_field, out_field, publish,
                            results_folder, seed_field)

S = TypeVar("S", bound="BenchSettings")


@dataclasses.dataclass
class BenchSettings:
    """Fields every benchmark has. Subclasses add their own and extend :meth:`validate` / :meth:`resolve`."""

    device: str = device_field()
    seed: int = seed_field()
    out: Path | None = out_field()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field; called before any work starts."""
        check_choice("--device", self.device, backends.DEVICE_CHOICES)
        check_seed(self.seed)
        check_output_dir("--out", self.out if self.out is not None else Path("results"))

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
