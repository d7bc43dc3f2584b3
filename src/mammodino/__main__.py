"""`python -m mammodino` (and `torchrun -m mammodino`) entry point."""

import sys

from mammodino.cli import main

# Guarded although spawn-started workers skip a package's __main__ (multiprocessing's
# _fixup_main_from_name): an import of this module must never run the CLI.
if __name__ == "__main__":
    sys.exit(main())
