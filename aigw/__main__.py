"""``python -m aigw`` runs the ``aigw`` command."""

import sys

from aigw.cli import main

sys.exit(main())
