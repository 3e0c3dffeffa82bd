"""The op registry. Importing this package declares every op."""

from . import elementwise, linear, loss, optim, preview, reduce, shape  # noqa: F401  (registers ops)
from .base import OPS, OpDef, get_op, register

__all__ = ["OPS", "OpDef", "get_op", "register"]
