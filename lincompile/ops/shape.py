"""flatten and reshape: views that move no data, with the gradient reshaping back."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ShapeError
from .base import OpDef, expect, fmt_shape, register

if TYPE_CHECKING:
    from ..ir import Dim


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


def _split(dims) -> tuple[int, Counter]:
    """A product of dims as (product of the fixed ones, multiset of the symbolic ones)."""
    return math.prod(d for d in dims if isinstance(d, int)), Counter(
        d for d in dims if isinstance(d, str))


def _count(fixed: int | Fraction, syms: Counter) -> str:
    return " · ".join([str(fixed)] * (fixed != 1 or not syms) + sorted(syms.elements()))


def resolve_shape(in_shape, shape):
    """ONNX Reshape semantics on (possibly symbolic) dims: 0 copies, -1 infers.

    The result is exact for every value of the symbolic dims, or a ShapeError: a -1 must
    come out as a fixed number or as exactly one of the input's symbolic dims (``[N, 4] →
    [-1, 2]`` would be ``2·N``, which a shape cannot hold), and without a -1 both sides
    must hold the same symbolic dims and the same fixed product.
    """
    where = f"cannot reshape {fmt_shape(in_shape)} to {list(shape)}"
    bad = [d for d in shape if not isinstance(d, (int, np.integer)) or d < -1]
    if bad:
        raise ShapeError(f"{where}: target dims must be ints ≥ -1, got {bad[0]!r}")
    zero = [i for i, d in enumerate(shape) if d == 0 and i >= len(in_shape)]
    if zero:
        raise ShapeError(f"{where}: a 0 at position {zero[0]} copies a dim the input does "
                         "not have")
    out = [in_shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise ShapeError(f"{where}: at most one -1")
    (f_in, s_in), (f_out, s_out) = _split(in_shape), _split([d for d in out if d != -1])
    rest = s_in - s_out   # out's symbolic dims are copies (0s) of in's, so a sub-multiset
    if -1 in out:
        if f_out == 0:
            raise ShapeError(f"{where}: a -1 beside a 0-sized dim is ambiguous")
        if f_in == 0 or (not rest and f_in % f_out == 0):
            fill: Dim = f_in // f_out
        elif f_in == f_out and sum(rest.values()) == 1:
            fill = next(rest.elements())
        else:
            what = _count(Fraction(f_in, f_out), rest)
            raise ShapeError(f"{where}: the -1 would be {what}, which is not one fixed or "
                             "symbolic dim; give the symbolic dim a place of its own (a 0 or "
                             "the -1) and let the fixed dims multiply to the same product")
        out[out.index(-1)] = fill
    elif (f_in, s_in) != (f_out, s_out) and not f_in == f_out == 0:
        raise ShapeError(f"{where}: {_count(f_in, s_in)} elements cannot become "
                         f"{_count(f_out, s_out)}" + (" for every value of the symbolic dims"
                                                       if s_in or s_out else ""))
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
