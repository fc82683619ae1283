"""The base of every command's settings (``dropbp allocate`` and every ``dropbp bench`` benchmark): one check that
runs what each field declares, one validate that reports every problem together, the JSON copy a result records;
and the fields most commands share (device, seed, results folder)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dropbp.recipes.config.fields import Naming, check_declared, check_output_dir, option_name
from dropbp.recipes.config.loader import Problems
from dropbp.recipes.config.options import device_field, out_field, seed_field


@dataclasses.dataclass
class Settings:
    """Settings of one command. Subclasses add fields (each declaring what it allows) and extend :meth:`check` with
    the rules that join several fields or need the machine."""

    def check(self, p: Problems, name: Naming = option_name) -> None:
        """Record every problem of these settings in ``p``; ``name`` says how errors call a field (its flag on the
        command line, its key in a YAML file). What each field declares (choices, a rule) is checked here, for every
        subclass's fields; a rule's normalised value is kept (e.g. drop rates become a tuple of floats)."""
        check_declared(self, p, name)

    def validate(self, name: Naming = option_name) -> None:
        """Raise one :class:`~dropbp.core.errors.ConfigError` listing every problem; called before any work
        starts."""
        problems = Problems("")
        self.check(problems, name)
        problems.raise_if_any()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field (paths as strings), recorded in each result."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class CommandSettings(Settings):
    """The fields most commands have: the device, the seed and the results folder."""

    device: str = device_field()
    seed: int = seed_field()
    out: Path | None = out_field()

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        p.check(check_output_dir, name("out"), self.out if self.out is not None else Path("results"))
