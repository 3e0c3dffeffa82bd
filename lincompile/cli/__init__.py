"""The ``lincompile`` command line.

Each subcommand is one function registered in :data:`COMMANDS` (``base.py``) with its
arguments, help and example, in a module of this package; arguments that several commands
share live in ``args.py``. Exit codes: 0 ok, 1 validation failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from ..errors import LincompileError

# Importing a command module registers its commands: this order is the order of --help.
# isort: off
from . import export, validate, info, compile, lower, train, demo, cache  # noqa: F401
# isort: on
from .base import COMMANDS, FAILED, OK, USAGE, Command, UsageError, command

__all__ = ["COMMANDS", "FAILED", "OK", "USAGE", "Command", "UsageError", "command", "main",
           "parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise UsageError(f"{message} (see '{self.prog} -h')")


def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="lincompile", formatter_class=fmt,
                description="Compile Linear-layer networks into chain-rule training graphs.",
                epilog="example:\n  lincompile demo\n  lincompile info model.onnx\n\n"
                       "'lincompile COMMAND -h' shows each command's options and an example.")
    p.add_argument("--version", action="version", version=f"lincompile {__version__}")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS.values():
        s = sub.add_parser(c.name, help=c.help, description=c.help[0].upper() + c.help[1:] + ".",
                           epilog=f"example:\n  {c.example}", formatter_class=fmt,
                           parents=[common])
        c.add_args(s)
        s.set_defaults(run=c.run)
    return p


def _model_after_freeze(a: argparse.Namespace) -> None:
    """``--freeze A B MODEL.onnx``: argparse gives MODEL to ``--freeze`` too (it takes one
    or more names); take the last one back as the model when no model came otherwise."""
    if "model" not in a or a.model is not None:
        return
    if getattr(a, "freeze", None) and a.freeze[-1].lower().endswith(".onnx"):
        a.model = a.freeze.pop()
    else:
        raise UsageError(f"the following arguments are required: model (see 'lincompile "
                         f"{a.command} -h')")


def main(argv: list[str] | None = None) -> int:
    try:  # never die on printing Σ or ∂ to a non-UTF-8 terminal
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    try:
        a = parser().parse_args(argv)
        verbose = a.verbose
        if a.command is None:
            parser().print_help(sys.stderr)
            return USAGE
        _model_after_freeze(a)
        return a.run(a)
    except KeyboardInterrupt:
        print("lincompile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `lincompile info m.onnx | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so that Python's exit flush fails quietly
        return 141   # 128 + SIGPIPE, as a shell reports it
    except Exception as e:  # one line unless --verbose
        if verbose:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror or e}: '{e.filename}'"
        elif not isinstance(e, LincompileError):
            msg = f"{type(e).__name__}: {msg} (a bug? rerun with --verbose and report it)"
        print(f"lincompile: error: {msg}", file=sys.stderr)
        return USAGE
