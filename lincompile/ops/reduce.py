"""reduce_sum and its adjoint broadcast_to; norm_sqrt, the square root that ends an L2 norm.

ONNX's ReduceMean imports as ``reduce_sum / n`` (torch's CPU mean: a sum, then a division)
and ReduceL2 as ``norm_sqrt(reduce_sum(x · x))``. ``norm_sqrt`` is ``sqrt`` whose gradient
is 0 where its input is 0: torch's ``norm_backward``, ``x · (dy / ‖x‖)`` masked to 0 where
``‖x‖ = 0``, where plain sqrt's ``dy / (2 · √0)`` would give NaN for an all-zero row. The
chain ``2x · (dy / (2‖x‖))`` is torch's ``x · (dy / ‖x‖)`` exactly (halving and doubling
are exact), NaN and ±Inf included.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .activations_exp import const, grad_infer, unary_infer
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


def _norm_sqrt_grad_ref(dy, x):
    with np.errstate(all="ignore"):
        return np.where(x == 0, 0, dy / (2 * np.sqrt(x))).astype(dy.dtype)


def _norm_sqrt_grad_body(f):
    dy, x = f.inputs   # x == 0 ? 0 : dy / (2 · √x)
    zero = const(f, 0, "zero", x)
    two_sqrt = f.node("Mul", [const(f, 2, "two", x), f.node("Sqrt", [x], ["sqrt_x"])],
                      ["two_sqrt"])
    f.node("Where", [f.node("Equal", [x, zero], ["x0"]), const(f, 0, "zero_dy", dy),
                     f.node("Div", [dy, two_sqrt], ["d"])], f.outputs)


norm_sqrt_grad = register(OpDef(
    "norm_sqrt_grad", ("dy", "x"), grad_infer, _norm_sqrt_grad_ref,
    onnx=lambda b, ins, outs: b.call("NormSqrtGrad", ins, outs, _norm_sqrt_grad_body),
    onnx_functions=("NormSqrtGrad",), kernel="pointwise_grad",
    doc="dnorm_sqrt: x == 0 ? 0 : dy / (2 · √x) (torch's norm_backward at a zero norm)",
))

norm_sqrt = register(OpDef(
    "norm_sqrt", ("x",), unary_infer, lambda x: np.sqrt(x),
    grad=(lambda g, dy, x, **_: g.apply("norm_sqrt_grad", [dy, x]),),
    onnx=lambda b, ins, outs: b.call("NormSqrt", ins, outs,
                                     lambda f: f.node("Sqrt", f.inputs, f.outputs)),
    onnx_functions=("NormSqrt",), kernel="pointwise", domains=("positive",),
    doc="√x of a sum of squares (ONNX ReduceL2's root): gradient 0 where x is 0, as torch's "
        "norm",
))
