"""``python -m dropbp.recipes`` runs the ``dropbp`` command line."""
from dropbp.recipes.console import run

run()
