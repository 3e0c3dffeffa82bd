"""softmax and log_softmax over the last axis, and their gradients (torch's formulas).

Each row is shifted by its max first (stable). A row holding NaN or +Inf, or only −Inf,
comes out all NaN, as in torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import OpDef, expect, fmt_shape, register, same_dtype, same_shape


def _infer(x):
    expect(x)
    if not x.shape:
        raise ShapeError(f"'{x.name}' is a scalar; softmax needs an axis (the last)")
    return [(x.dtype, x.shape)]


def _grad_infer(dy, y):
    expect(dy)
    if not y.shape:
        raise ShapeError(f"'{y.name}' {fmt_shape(y.shape)} is a scalar")
    return [(same_dtype(dy, y), same_shape(dy, y))]


def _shifted(x):
    with np.errstate(invalid="ignore"):
        return x - x.max(axis=-1, keepdims=True)


def _softmax_ref(x):
    e = np.exp(_shifted(x))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def _log_softmax_ref(x):
    z = _shifted(x)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(x.dtype)


def _axes(f):
    return f.const(np.array([-1], np.int64), "axes")


def _softmax_grad_body(f):
    dy, y = f.inputs   # y · (dy − Σ_j dy_j y_j)
    dot = f.node("ReduceSum", [f.node("Mul", [dy, y], ["dy_y"]), _axes(f)], ["dot"], keepdims=1)
    f.node("Mul", [y, f.node("Sub", [dy, dot], ["centered"])], f.outputs)


def _log_softmax_grad_body(f):
    dy, y = f.inputs   # dy − e^y · Σ_j dy_j
    total = f.node("ReduceSum", [dy, _axes(f)], ["total"], keepdims=1)
    f.node("Sub", [dy, f.node("Mul", [f.node("Exp", [y], ["p"]), total], ["p_total"])],
           f.outputs)


softmax_grad = register(OpDef(
    "softmax_grad", ("dy", "y"), _grad_infer,
    lambda dy, y: (y * (dy - (dy * y).sum(axis=-1, keepdims=True))).astype(dy.dtype),
    onnx=lambda b, ins, outs: b.call("SoftmaxGrad", ins, outs, _softmax_grad_body),
    onnx_functions=("SoftmaxGrad",), kernel="softmax_grad",
    doc="dsoftmax from dOut and the output y: y · (dy − Σ dy·y) per row",
))

log_softmax_grad = register(OpDef(
    "log_softmax_grad", ("dy", "y"), _grad_infer,
    lambda dy, y: (dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)).astype(dy.dtype),
    onnx=lambda b, ins, outs: b.call("LogSoftmaxGrad", ins, outs, _log_softmax_grad_body),
    onnx_functions=("LogSoftmaxGrad",), kernel="softmax_grad",
    doc="dlog_softmax from dOut and the output y: dy − e^y · Σ dy per row",
))

softmax = register(OpDef(
    "softmax", ("x",), _infer, _softmax_ref,
    grad=(lambda g, dy, x, *, y, **_: g.apply("softmax_grad", [dy, y]),),
    onnx=lambda b, ins, outs: b.node("Softmax", ins, outs, axis=-1), kernel="softmax",
    doc="e^x / Σ e^x over the last axis",
))

log_softmax = register(OpDef(
    "log_softmax", ("x",), _infer, _log_softmax_ref,
    grad=(lambda g, dy, x, *, y, **_: g.apply("log_softmax_grad", [dy, y]),),
    onnx=lambda b, ins, outs: b.node("LogSoftmax", ins, outs, axis=-1), kernel="softmax",
    doc="x − log Σ e^x over the last axis",
))
