"""The op registry. Importing this package declares every op."""

# importing each op family registers its ops
from . import activations, elementwise, linear, loss, norm, optim, reduce, shape, softmax  # noqa: F401
from .base import OPS, OpDef, get_op, register

__all__ = ["OPS", "OpDef", "get_op", "register"]
