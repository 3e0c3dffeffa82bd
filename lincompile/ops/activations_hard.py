"""Piecewise-linear activations of torch.nn: Hardtanh (ReLU6 is hardtanh(0, 6); ONNX's
Clip), Hardsigmoid, Hardswish and PReLU with its trainable slope, and their gradients.

The gradients are torch's: ``hardtanh_backward`` passes dy only strictly inside
(min_val, max_val) (so a NaN x gets 0, as torch's vectorized loop gives; its scalar tail
gives dy), ``hardsigmoid_backward`` likewise inside (−3, 3), ``hardswish_backward`` is 0 at
x ≤ −3 and dy at x ≥ 3, and PReLU's slope gradient is ``x > 0 ? 0 : x · dy`` summed over
every axis the slope is broadcast along. torch's Hardsigmoid gradient takes its 1/6 as a
float32 even in float64, and so does lincompile's (for any alpha). ``torch.clamp``, which
exports to the same Clip, passes dy at x = min and x = max too; lincompile imports Clip as
hardtanh.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .activations_exp import const, grad_infer, unary_infer
from .base import OpDef, dims_match, expect, fmt_shape, register, same_dtype, same_shape
from .elementwise import unbroadcast


def _where(c, a, b, dtype):
    return np.where(c, a, b).astype(dtype)


# --------------------------------------------------------------------------- hardtanh
def _hardtanh_infer(x, *rest, min_val, max_val):
    if not min_val <= max_val:
        raise ShapeError(f"hardtanh: min_val {min_val} is above max_val {max_val}")
    return grad_infer(x, *rest) if rest else unary_infer(x)


def _hardtanh_body(f):
    (x,) = f.inputs
    f.node("Clip", [x, f.attr("min_val", x), f.attr("max_val", x)], f.outputs)


def _hardtanh_grad_body(f):
    dy, x = f.inputs   # strictly inside (min, max): dy, else 0 (NaN too)
    inside = f.node("And", [f.node("Greater", [x, f.attr("min_val", x)], ["above"]),
                            f.node("Less", [x, f.attr("max_val", x)], ["below"])], ["inside"])
    f.node("Where", [inside, dy, const(f, 0, "zero", dy)], f.outputs)


HARDTANH = {"min_val": -1.0, "max_val": 1.0}

hardtanh_grad = register(OpDef(
    "hardtanh_grad", ("dy", "x"), _hardtanh_infer,
    lambda dy, x, *, min_val, max_val: _where((x > min_val) & (x < max_val), dy, 0, dy.dtype),
    onnx=lambda b, ins, outs, **a: b.call("HardtanhGrad", ins, outs, _hardtanh_grad_body, **a),
    onnx_functions=("HardtanhGrad",), attrs=dict(HARDTANH), kernel="pointwise_grad",
    doc="dhardtanh: min_val < x < max_val ? dy : 0",
))

hardtanh = register(OpDef(
    "hardtanh", ("x",), _hardtanh_infer,
    lambda x, *, min_val, max_val: _where(x <= min_val, min_val,
                                          _where(x >= max_val, max_val, x, x.dtype), x.dtype),
    grad=(lambda g, dy, x, *, min_val, max_val, **_: g.apply(
        "hardtanh_grad", [dy, x], min_val=min_val, max_val=max_val),),
    onnx=lambda b, ins, outs, **a: b.call("Hardtanh", ins, outs, _hardtanh_body, **a),
    onnx_functions=("Hardtanh",), attrs=dict(HARDTANH), kernel="pointwise",
    doc="x clamped to [min_val, max_val], NaN kept (torch.nn.Hardtanh; ReLU6 is (0, 6); "
        "ONNX Clip)",
))


# ------------------------------------------------------------------------ hardsigmoid
def _hardsigmoid_ref(x, *, alpha, beta):
    v = x * alpha + beta
    return _where(v <= 0, 0, _where(v >= 1, 1, v, x.dtype), x.dtype)


def _hardsigmoid_grad_ref(dy, x, *, alpha, beta):
    v = x * alpha + beta
    return _where((v > 0) & (v < 1), dy * alpha, 0, dy.dtype)


def _hardsigmoid_grad_body(f):
    dy, x = f.inputs   # 0 < αx + β < 1 ? dy · α : 0 (NaN: 0)
    a = f.attr("alpha", x)
    v = f.node("Add", [f.node("Mul", [x, a], ["ax"]), f.attr("beta", x)], ["v"])
    inside = f.node("And", [f.node("Greater", [v, const(f, 0, "zero", x)], ["above"]),
                            f.node("Less", [v, const(f, 1, "one", x)], ["below"])], ["inside"])
    f.node("Where", [inside, f.node("Mul", [dy, a], ["dya"]), const(f, 0, "zero_dy", dy)],
           f.outputs)


HARDSIGMOID = {"alpha": 1 / 6, "beta": 0.5}

hardsigmoid_grad = register(OpDef(
    "hardsigmoid_grad", ("dy", "x"), grad_infer, _hardsigmoid_grad_ref,
    onnx=lambda b, ins, outs, **a: b.call("HardSigmoidGrad", ins, outs, _hardsigmoid_grad_body,
                                          **a),
    onnx_functions=("HardSigmoidGrad",), attrs=dict(HARDSIGMOID), kernel="pointwise_grad",
    doc="dhardsigmoid: 0 < alpha·x + beta < 1 ? alpha · dy : 0",
))

hardsigmoid = register(OpDef(
    "hardsigmoid", ("x",), unary_infer, _hardsigmoid_ref,
    # torch's hardsigmoid_backward takes 1/6 as a float (1.0f / 6.0f) in float64 too: the
    # gradient takes alpha rounded to float32 likewise
    grad=(lambda g, dy, x, *, alpha, beta, **_: g.apply(
        "hardsigmoid_grad", [dy, x], alpha=float(np.float32(alpha)), beta=beta),),
    onnx=lambda b, ins, outs, alpha, beta: b.node("HardSigmoid", ins, outs, alpha=float(alpha),
                                                  beta=float(beta)),
    attrs=dict(HARDSIGMOID), kernel="pointwise",
    doc="max(0, min(1, alpha·x + beta)) (ONNX HardSigmoid; torch.nn.Hardsigmoid is the "
        "default alpha 1/6, beta 0.5)",
))


# -------------------------------------------------------------------------- hardswish
def _hardswish_grad_ref(dy, x):
    return _where(x >= 3, dy, _where(x <= -3, 0, dy * (x / 3 + 0.5), dy.dtype), dy.dtype)


def _hardswish_grad_body(f):
    dy, x = f.inputs   # x ≥ 3 ? dy : x ≤ −3 ? 0 : dy · (x/3 + ½) (NaN: NaN)
    three = const(f, 3, "three", x)
    mid = f.node("Mul", [dy, f.node("Add", [f.node("Div", [x, three], ["x3"]),
                                            const(f, 0.5, "half", x)], ["slope"])], ["mid"])
    low = f.node("Where", [f.node("LessOrEqual", [x, const(f, -3, "minus_three", x)], ["low"]),
                           const(f, 0, "zero", dy), mid], ["below3"])
    f.node("Where", [f.node("GreaterOrEqual", [x, three], ["high"]), dy, low], f.outputs)


hardswish_grad = register(OpDef(
    "hardswish_grad", ("dy", "x"), grad_infer, _hardswish_grad_ref,
    onnx=lambda b, ins, outs: b.call("HardSwishGrad", ins, outs, _hardswish_grad_body),
    onnx_functions=("HardSwishGrad",), kernel="pointwise_grad",
    doc="dhardswish: x ≥ 3 ? dy : x ≤ −3 ? 0 : dy · (x/3 + 1/2)",
))

hardswish = register(OpDef(
    "hardswish", ("x",), unary_infer,
    lambda x: (x * np.minimum(np.maximum(x + 3, 0), 6) / 6).astype(x.dtype),
    grad=(lambda g, dy, x, **_: g.apply("hardswish_grad", [dy, x]),),
    onnx=lambda b, ins, outs: b.node("HardSwish", ins, outs), kernel="pointwise",
    doc="x · min(max(x + 3, 0), 6) / 6 (torch.nn.Hardswish, ONNX HardSwish)",
))


# ------------------------------------------------------------------------------ prelu
def check_slope(x, slope) -> None:
    """``slope`` broadcasts to ``x`` one way (numpy rules, right-aligned), as ONNX PRelu."""
    if len(slope.shape) > len(x.shape) or not all(
            d == 1 or dims_match(d, e) for d, e in zip(slope.shape[::-1], x.shape[::-1])):
        raise ShapeError(f"slope '{slope.name}' {fmt_shape(slope.shape)} does not broadcast "
                         f"to input '{x.name}' {fmt_shape(x.shape)}")


def _prelu_infer(x, slope):
    expect(x)
    same_dtype(x, slope)
    check_slope(x, slope)
    return [(x.dtype, x.shape)]


def _prelu_grad_infer(dy, x, slope):
    _prelu_infer(x, slope)
    return [(same_dtype(dy, x), same_shape(dy, x))]


def _prelu_grad_body(f):
    dy, x, slope = f.inputs   # torch: x > 0 ? dy : slope · dy (NaN: slope · dy)
    pos = f.node("Greater", [x, const(f, 0, "zero", x)], ["pos"])
    f.node("Where", [pos, dy, f.node("Mul", [slope, dy], ["slope_dy"])], f.outputs)


def _prelu_slope_grad_body(f):
    dy, x = f.inputs   # torch: x > 0 ? 0 : x · dy, before the sum
    pos = f.node("Greater", [x, const(f, 0, "zero", x)], ["pos"])
    f.node("Where", [pos, const(f, 0, "zero_dy", dy), f.node("Mul", [x, dy], ["x_dy"])],
           f.outputs)


prelu_grad = register(OpDef(
    "prelu_grad", ("dy", "x", "slope"), _prelu_grad_infer,
    lambda dy, x, slope: _where(x > 0, dy, slope * dy, dy.dtype),
    onnx=lambda b, ins, outs: b.call("PReluGrad", ins, outs, _prelu_grad_body),
    onnx_functions=("PReluGrad",), kernel="pointwise_grad",
    doc="dprelu/dx: x > 0 ? dy : slope · dy (slope broadcast as in prelu)",
))

prelu_slope_grad = register(OpDef(
    "prelu_slope_grad", ("dy", "x"), grad_infer,
    lambda dy, x: _where(x > 0, 0, x * dy, dy.dtype),
    onnx=lambda b, ins, outs: b.call("PReluSlopeGrad", ins, outs, _prelu_slope_grad_body),
    onnx_functions=("PReluSlopeGrad",), kernel="pointwise_grad",
    doc="dprelu/dslope before the sum over the broadcast axes: x > 0 ? 0 : x · dy",
))

prelu = register(OpDef(
    "prelu", ("x", "slope"), _prelu_infer,
    lambda x, slope: _where(x > 0, x, slope * x, x.dtype),
    grad=(lambda g, dy, x, slope, **_: g.apply("prelu_grad", [dy, x, slope]),
          lambda g, dy, x, slope, **_: unbroadcast(g, g.apply("prelu_slope_grad", [dy, x]),
                                                   slope)),
    onnx=lambda b, ins, outs: b.node("PRelu", ins, outs), kernel="pointwise",
    doc="x > 0 ? x : slope · x, slope broadcast to x one way (torch.nn.PReLU: one slope or "
        "one per channel, trainable; ONNX PRelu)",
))

