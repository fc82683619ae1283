"""``python -m dropbp.benchmarks BENCHMARK [options]`` is ``dropbp bench BENCHMARK [options]``; it also works from a
source tree that is not installed (where the ``dropbp.commands`` entry point is missing)."""
import sys

from dropbp.recipes.cli import main

from .cli import register

sys.exit(main(["bench", *sys.argv[1:]], extra_commands=[register]))
