"""``python -m lincompile.cli``: the command line, as ``python -m lincompile``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
