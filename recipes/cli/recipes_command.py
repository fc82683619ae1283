"""``dropbp recipes ls|show|validate``: the shipped recipes, one recipe's text, and checking recipe files."""
from __future__ import annotations

import argparse
import sys

from dropbp.core.errors import ConfigError

EXAMPLES = """examples:
  dropbp recipes ls
  dropbp recipes show tiny-tasks
  dropbp recipes validate recipes/configs/*.yaml my-recipe.yaml"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``recipes`` and its three actions."""
    parser = subparsers.add_parser("recipes", help="list, show and validate recipes", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   description="The recipes this project ships, and checks of recipe files.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="the shipped recipes, with their descriptions")
    ls.set_defaults(run=lambda args: list_recipes())
    show = actions.add_parser("show", help="print a shipped recipe (or any recipe file)")
    show.add_argument("name", help="a shipped recipe's name or a file")
    show.set_defaults(run=lambda args: show_recipe(args.name))
    validate = actions.add_parser("validate", help="check recipe files; every problem of every file is listed")
    validate.add_argument("files", nargs="+", help="recipe files or shipped recipe names")
    validate.set_defaults(run=lambda args: validate_recipes(args.files))


def list_recipes() -> int:
    """Print name, method, model and description of every shipped recipe."""
    from dropbp.recipes.config.registry import shipped
    from dropbp.recipes.config.schema import load_recipe
    from dropbp.recipes.report.tables import markdown_table

    rows = []
    for name, path in shipped().items():
        try:
            recipe = load_recipe(path, for_run=False)
            rows.append((name, recipe.model.name, recipe.model.method, recipe.description))
        except ConfigError as err:
            rows.append((name, "-", "-", f"INVALID: {str(err).splitlines()[0]}"))
    print(markdown_table(["recipe", "model", "method", "description"], rows))
    return 0


def show_recipe(name: str) -> int:
    """Print the recipe's file, comments included."""
    from dropbp.recipes.config.registry import find_recipe

    print(find_recipe(name).read_text(), end="")
    return 0


def validate_recipes(files: list[str]) -> int:
    """Check each file; print OK or its problems; exit 2 if any file has a problem."""
    from dropbp.recipes.config.registry import find_recipe
    from dropbp.recipes.config.schema import load_recipe

    failed = 0
    for name in files:
        try:
            load_recipe(find_recipe(name), for_run=False)
            print(f"{name}: OK")
        except ConfigError as err:
            failed += 1
            print(str(err), file=sys.stderr)
    if failed:
        raise ConfigError(f"{failed} of {len(files)} recipes have problems (listed above).")
    return 0
