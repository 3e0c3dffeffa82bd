"""The op registry. Importing this package declares every op."""

# importing each op family registers its ops
from . import (  # noqa: F401
    activations,
    activations_exp,
    activations_hard,
    concat,
    elementwise,
    linear,
    loss,
    math_unary,
    norm,
    optim,
    preview,
    reduce,
    shape,
    softmax,
)
from .base import OPS, OpDef, get_op, register

__all__ = ["OPS", "OpDef", "get_op", "register"]
