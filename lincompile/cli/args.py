"""Arguments that several subcommands share, with their checks: how a model file is read,
the numeric ranges, ``--precision``, and the loss/optimizer flags."""

from __future__ import annotations

import argparse
import math

from ..errors import LincompileError
from .base import UsageError


def number(kind: type, lo: float, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False):
    """An argparse type: a finite ``kind`` in the range from ``lo`` to ``hi`` (open ends
    excluded), else one line saying what is allowed."""
    f = lambda x: f"{x:g}" if kind is float else str(x)
    rng = (f"in {'(' if lo_open else '['}{f(lo)}, {f(hi)}{')' if hi_open else ']'}"
           if hi is not None else f"{'>' if lo_open else '≥'} {f(lo)}")

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got '{s}'") from None
        if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and (
                hi is None or (v < hi if hi_open else v <= hi))):
            raise argparse.ArgumentTypeError(f"must be a finite number {rng}, got '{s}'"
                                             if kind is float else f"must be {rng}, got '{s}'")
        return v
    parse.__name__ = kind.__name__
    return parse


def betas(s: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(b) for b in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B1,B2 (two floats), got '{s}'") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):   # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"betas must lie in [0, 1), got '{s}'")
    return b1, b2


def arch(s: str) -> str:
    from ..backends.cuda import check_arch

    try:
        return check_arch(s)
    except LincompileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: Bounds of the integer arguments: sane, and far below what would overflow anything.
seed = number(int, 0, 2**63 - 1)
MAX_BATCH, MAX_EPOCHS, MAX_THREADS, MAX_WORKERS = 2**31 - 1, 100_000, 1024, 4096


def model_flags(p) -> None:
    """How a command reads a model file."""
    p.add_argument("--dynamic-batch", action="store_true",
                   help="make a leading (batch) dim that the file fixes symbolic, N")
    p.add_argument("--logits", metavar="NAME",
                   help="import the model up to this tensor (default: the logits before a "
                        "classifier head such as Softmax, found from the outputs)")


def precision_arg(p, what: str) -> None:
    """``--precision``: the one place its choices and help live (validate, compile, train);
    ``what`` says what it applies to for that command."""
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                   help=f"{what} (default fp32; tf32: tensor cores with tf32 operands, CUDA "
                        "only; bf16: bf16 operands, fp32 accumulation, like torch.autocast)")


def training_args(p, required: bool) -> None:
    """The loss, optimizer and its hyperparameters (export-training, compile --train, train)."""
    p.add_argument("--loss", required=required, choices=["cross-entropy", "mse"])
    p.add_argument("--optimizer", required=required,
                   choices=["sgd", "adam", "adamw", "adagrad", "none"],
                   help="'none' writes loss and P.grad outputs only")
    p.add_argument("--lr", type=number(float, 0, lo_open=True), metavar="F",
                   help="learning rate recorded in the file (lincompile.lr), > 0; default: "
                        "the optimizer's (sgd and adagrad 0.01, adam/adamw 0.001)")
    p.add_argument("--momentum", type=number(float, 0, 1), metavar="F",
                   help="sgd only, in [0, 1], default 0")
    p.add_argument("--weight-decay", type=number(float, 0), metavar="F",
                   help="≥ 0, default 0 (adamw: 0.01)")
    p.add_argument("--betas", type=betas, metavar="B1,B2",
                   help="adam/adamw, each in [0, 1), default 0.9,0.999")
    p.add_argument("--eps", type=number(float, 0, lo_open=True), metavar="F",
                   help="adam/adamw, > 0, default 1e-8; adagrad, default 1e-10")
    p.add_argument("--lr-decay", type=number(float, 0), metavar="F",
                   help="adagrad only, ≥ 0, default 0")
    p.add_argument("--initial-accumulator-value", type=number(float, 0),
                   metavar="F", help="adagrad only, ≥ 0, default 0")
    p.add_argument("--freeze", nargs="+", action="extend", default=[], metavar="NAME",
                   help="parameters to keep fixed (they stay initializers)")
    p.add_argument("--emit-grads", action="store_true", help="also output every P.grad")


def optimizer_from(a: argparse.Namespace):
    """The optimizer the flags ask for (None for 'none'); flags that do not apply to it
    are usage errors rather than silently ignored."""
    from ..training import SGD, Adagrad, Adam, AdamW

    allowed = {"sgd": {"lr", "momentum", "weight_decay"}, "none": set(),
               "adam": {"lr", "weight_decay", "betas", "eps"},
               "adagrad": {"lr", "lr_decay", "weight_decay", "initial_accumulator_value",
                           "eps"}}
    allowed["adamw"] = allowed["adam"]
    given = {k for k in ("lr", "momentum", "weight_decay", "betas", "eps", "lr_decay",
                         "initial_accumulator_value") if getattr(a, k) is not None}
    bad = sorted(given - allowed[a.optimizer])
    if bad:
        flags = ", ".join("--" + b.replace("_", "-") for b in bad)
        raise UsageError(f"{flags} does not apply to --optimizer {a.optimizer}")
    kwargs = {k: getattr(a, k) for k in given}
    cls = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": Adagrad}.get(a.optimizer)
    return cls(**kwargs) if cls else None
