"""``python -m dropbp.recipes`` runs the ``dropbp`` command line."""
import sys

from dropbp.recipes.cli import main

sys.exit(main())
