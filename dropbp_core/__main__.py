"""``python -m dropbp_core`` runs the ``dropbp`` command line."""
import sys

from .cli import main

sys.exit(main())
