"""``python -m dftflow`` runs the CLI."""

import sys

from dftflow.cli.app import main

sys.exit(main())
