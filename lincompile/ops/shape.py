"""flatten and reshape: views that move no data, with the gradient reshaping back."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import OpDef, expect, fmt_shape, register


def _back(g, dy, x, **_):
    """Reshape dy to x's shape; the one symbolic dim (the batch) becomes -1."""
    return g.reshape(dy, [-1 if isinstance(d, str) else d for d in x.shape])


def _prod(dims):
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _flatten_infer(x, *, axis):
    expect(x, dtypes=("float32", "float64", "int64"))
    if not 0 <= axis <= len(x.shape):
        raise ShapeError(f"flatten axis {axis} out of range for '{x.name}' {fmt_shape(x.shape)}")
    lead, rest = _prod(x.shape[:axis]), _prod(x.shape[axis:])
    if lead is None and axis == 1:
        lead = x.shape[0]
    if rest is None:
        raise ShapeError(f"flatten of '{x.name}' {fmt_shape(x.shape)}: the dims after axis "
                         f"{axis} must be fixed")
    if lead is None:
        raise ShapeError(f"flatten of '{x.name}' {fmt_shape(x.shape)}: only the batch dim may "
                         "be symbolic")
    return [(x.dtype, (lead, rest))]


flatten = register(OpDef(
    "flatten", ("x",), _flatten_infer,
    lambda x, *, axis: x.reshape(math.prod(x.shape[:axis]), -1),
    grad=(_back,),
    onnx=lambda b, ins, outs, axis: b.node("Flatten", ins, outs, axis=axis),
    attrs={"axis": 1}, kernel="copy",
    doc="[d0, …, d_axis−1, …] → [d0·…·d_axis−1, rest]",
))


def resolve_shape(in_shape, shape):
    """ONNX Reshape semantics on (possibly symbolic) dims: 0 copies, -1 infers."""
    out = [in_shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise ShapeError(f"reshape to {list(shape)}: at most one -1")
    if -1 in out:
        total, known = _prod(in_shape), _prod([d for d in out if d != -1])
        if total is not None and known:
            out[out.index(-1)] = total // known
        else:  # the symbolic batch dim lands where the -1 is
            syms = [d for d in in_shape if isinstance(d, str)]
            out[out.index(-1)] = syms[0] if len(syms) == 1 else "?"
    total, new = _prod(in_shape), _prod(out)
    if total is not None and new is not None and total != new:
        raise ShapeError(f"cannot reshape {fmt_shape(in_shape)} ({total} elements) to "
                         f"{fmt_shape(out)} ({new})")
    return tuple(out)


def _reshape_infer(x, *, shape):
    expect(x, dtypes=("float32", "float64", "int64"))
    if shape is None:
        raise ShapeError("reshape needs a shape attribute")
    return [(x.dtype, resolve_shape(x.shape, list(shape)))]


reshape = register(OpDef(
    "reshape", ("x",), _reshape_infer,
    lambda x, *, shape: x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)]),
    grad=(_back,),
    onnx=lambda b, ins, outs, shape: b.node(
        "Reshape", [ins[0], b.const(np.array(shape, np.int64), "shape")], outs),
    attrs={"shape": None}, kernel="copy",
    doc="ONNX Reshape: 0 copies a dim, -1 takes what is left",
))

identity = register(OpDef(
    "identity", ("x",), lambda x: [(x.dtype, x.shape)], lambda x: x.copy(),
    grad=(lambda g, dy, x, **_: dy,),
    onnx=lambda b, ins, outs: b.node("Identity", ins, outs), kernel="copy",
    doc="a copy (names a value twice)",
))
