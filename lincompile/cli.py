"""The ``lincompile`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lincompile", description=__doc__)
    p.add_argument("--version", action="version", version=f"lincompile {__version__}")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
