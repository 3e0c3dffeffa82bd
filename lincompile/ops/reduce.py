"""reduce_sum and its adjoint broadcast_to."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import OpDef, dims_match, expect, fmt_shape, register
from .elementwise import unbroadcast


def _axes(x, axes):
    if axes is None:
        return list(range(len(x.shape)))
    r = len(x.shape)
    if any(not -r <= a < r for a in axes):
        raise ShapeError(f"axes {list(axes)} out of range for '{x.name}' {fmt_shape(x.shape)}")
    return sorted(a % r for a in axes)


def _reduce_infer(x, *, axes, keepdims):
    expect(x)
    ax = _axes(x, axes)
    shape = tuple(1 if i in ax else d for i, d in enumerate(x.shape) if keepdims or i not in ax)
    return [(x.dtype, shape)]


def _reduce_onnx(b, ins, outs, *, axes, keepdims):
    if axes is None:
        b.node("ReduceSum", ins, outs, keepdims=int(keepdims))
    else:
        b.node("ReduceSum", [ins[0], b.const(np.array(axes, np.int64), "axes")], outs,
               keepdims=int(keepdims))


def _bcast_infer(v, like):
    expect(v)
    if len(v.shape) != len(like.shape) or any(
        d != 1 and not dims_match(d, e) for d, e in zip(v.shape, like.shape)
    ):
        raise ShapeError(f"'{v.name}' {fmt_shape(v.shape)} does not broadcast to the shape "
                         f"of '{like.name}' {fmt_shape(like.shape)} (ranks must match)")
    return [(v.dtype, like.shape)]


def _reduce_grad(g, dy, x, *, axes, keepdims, **_):
    if not keepdims:  # put the reduced axes back as 1s first
        ax = range(len(x.shape)) if axes is None else [a % len(x.shape) for a in axes]
        dy = g.reshape(dy, [1 if i in ax else (-1 if isinstance(d, str) else d)
                            for i, d in enumerate(x.shape)])
    return g.broadcast_to(dy, x)


def _expand_like_body(f):
    v, like = f.inputs
    f.node("Expand", [v, f.node("Shape", [like], ["shape"])], f.outputs)


broadcast_to = register(OpDef(
    "broadcast_to", ("v", "like"), _bcast_infer,
    lambda v, like: np.broadcast_to(v, like.shape).copy(),
    grad=(lambda g, dy, v, like, **_: unbroadcast(g, dy, v), None),
    onnx=lambda b, ins, outs: b.call("ExpandLike", ins, outs, _expand_like_body),
    onnx_functions=("ExpandLike",),
    kernel="broadcast_to",
    doc="v broadcast to the shape of like (same rank, 1s where v is repeated)",
))


reduce_sum = register(OpDef(
    "reduce_sum", ("x",), _reduce_infer,
    lambda x, *, axes, keepdims: np.sum(x, axis=None if axes is None else tuple(axes),
                                        keepdims=keepdims).astype(x.dtype),
    grad=(_reduce_grad,),
    onnx=_reduce_onnx, attrs={"axes": None, "keepdims": False}, kernel="reduce_sum",
    doc="sum over axes (all when axes is None); axes=[0] is the sum over the batch",
))
