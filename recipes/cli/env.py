"""``dropbp env``: which backends exist, which can run here, the devices, and library versions."""
from __future__ import annotations

import argparse

from dropbp.recipes.report.publish import library_versions
from dropbp.recipes.report.tables import markdown_table

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``env`` subcommand."""
    parser = subparsers.add_parser("env", help="show backends, devices and library versions",
                                   description="Show each device backend, whether it can run here, and versions.",
                                   epilog="example:\n  dropbp env", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=lambda args: run())


def run() -> int:
    """Print the backends table, the dynamo policy and the versions table."""
    from dropbp import backends
    from dropbp.core import dynamo_settings

    rows = []
    for name, reason in backends.availability().items():
        if reason is None:
            backend = backends.get(name)
            memory = backend.memory_capacity_bytes()
            rows.append((name, "yes", backend.device_name(), f"{memory / 2**30:.1f} GiB" if memory else "-"))
        else:
            rows.append((name, "no", reason.split(". ")[0], "-"))
    auto = backends.resolve("auto").name
    print(markdown_table(["backend", "available", "device / reason", "memory"], rows))
    print(f"\n--device auto picks: {auto}")
    managed = "yes" if dynamo_settings.managed() else "no (opted out)"
    print(f"DropBP may change torch._dynamo settings: {managed} ({dynamo_settings.ENV_OPT_OUT}=0 opts out)\n")
    print(markdown_table(["library", "version"], [(k, v or "not installed") for k, v in library_versions().items()]))
    return 0
