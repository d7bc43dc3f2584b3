"""`python -m mammodino` (and `torchrun -m mammodino`) entry point."""

import sys

from mammodino.cli import main

sys.exit(main())
