"""Elementwise ops: add, mul, div (numpy broadcasting), the activations and their
gradients."""

from __future__ import annotations

import numpy as np

from .base import OpDef, broadcast, expect, register, same_dtype, same_shape

ALL = ("float32", "float64", "int64")


def unbroadcast(g, dy, x):
    """Sum ``dy`` down to the shape of ``x`` (the gradient of a broadcast)."""
    if tuple(dy.shape) == tuple(x.shape):
        return dy
    if x.shape == ():
        return g.reduce_sum(dy, axes=None)
    lead = len(dy.shape) - len(x.shape)
    if lead:
        dy = g.reduce_sum(dy, axes=list(range(lead)))
    ones = [i for i, (d, e) in enumerate(zip(x.shape, dy.shape)) if d == 1 and e != 1]
    return g.reduce_sum(dy, axes=ones, keepdims=True) if ones else dy


def _binary_infer(a, b):
    expect(a, dtypes=ALL)
    return [(same_dtype(a, b), broadcast(a, b))]


add = register(OpDef(
    "add", ("a", "b"), _binary_infer, np.add,
    grad=(
        lambda g, dy, a, b, **_: unbroadcast(g, dy, a),
        lambda g, dy, a, b, **_: unbroadcast(g, dy, b),
    ),
    onnx=lambda b, ins, outs: b.node("Add", ins, outs), kernel="binary",
    doc="out = a + b (numpy broadcasting)",
))

mul = register(OpDef(
    "mul", ("a", "b"), _binary_infer, np.multiply,
    grad=(
        lambda g, dy, a, b, **_: unbroadcast(g, g.mul(dy, b), a),
        lambda g, dy, a, b, **_: unbroadcast(g, g.mul(dy, a), b),
    ),
    onnx=lambda b, ins, outs: b.node("Mul", ins, outs), kernel="binary",
    doc="out = a · b (numpy broadcasting)",
))


def _div_infer(a, b):
    expect(a)   # float: integer division means another thing
    return [(same_dtype(a, b), broadcast(a, b))]


def _div_grad_b(g, dy, a, b, **_):
    """torch's ``−dy · ((a / b) / b)``."""
    q = g.apply("div", [g.apply("div", [a, b]), b])
    minus = g.const(np.array(-1, dy.dtype), g.fresh("minus_one"))
    return unbroadcast(g, g.mul(g.mul(dy, q), minus), b)


div = register(OpDef(
    "div", ("a", "b"), _div_infer, np.divide,
    grad=(
        lambda g, dy, a, b, **_: unbroadcast(g, g.apply("div", [dy, b]), a),
        _div_grad_b,
    ),
    onnx=lambda b, ins, outs: b.node("Div", ins, outs), kernel="binary",
    doc="out = a / b (numpy broadcasting; x / 0 is ±Inf or NaN, as in torch)",
))


def _unary_infer(x):
    expect(x)
    return [(x.dtype, x.shape)]


def _grad_infer(dy, y):
    expect(dy)
    return [(same_dtype(dy, y), same_shape(dy, y))]


def _sigmoid(x):
    # Stable on both tails: exp never overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _activation(name, onnx_op, forward, backward_ref, backward_body, doc):
    """Declare activation ``name`` and ``name_grad`` (which takes dOut and the output y)."""
    grad_op = register(OpDef(
        f"{name}_grad", ("dy", "y"), _grad_infer, backward_ref,
        onnx=lambda b, ins, outs: b.call(f"{onnx_op}Grad", ins, outs, backward_body),
        onnx_functions=(f"{onnx_op}Grad",),
        kernel="activation_grad", doc=f"d{name}: dx from dOut and the output y",
    ))
    fwd = register(OpDef(
        name, ("x",), _unary_infer, forward,
        grad=(lambda g, dy, x, *, y, **_: g.apply(grad_op.name, [dy, y]),),
        onnx=lambda b, ins, outs: b.node(onnx_op, ins, outs), kernel="activation", doc=doc,
    ))
    return fwd, grad_op


def _relu_grad_ref(dy, y):
    # torch's threshold_backward(dy, y, 0): y <= 0 ? 0 : dy, so a NaN y passes dy through
    # (np.where(y > 0, dy, 0) would give 0 there).
    return np.where(y <= 0, 0, dy).astype(dy.dtype)


def _relu_grad_body(f):
    dy, y = f.inputs   # y <= 0 ? 0 : dy (a NaN y passes dy, as in torch)
    zero = f.const(np.zeros((), np.float32), "zero")
    off = f.node("LessOrEqual", [y, f.node("CastLike", [zero, y], ["zero_y"])], ["off"])
    f.node("Where", [off, f.node("CastLike", [zero, dy], ["zero_like"]), dy], f.outputs)


def _sigmoid_grad_body(f):
    dy, y = f.inputs   # dy · y · (1 − y)
    one = f.node("CastLike", [f.const(np.ones((), np.float32), "one"), y], ["one_like"])
    f.node("Mul", [f.node("Mul", [dy, y], ["dy_y"]), f.node("Sub", [one, y], ["one_minus_y"])],
           f.outputs)


def _tanh_grad_body(f):
    dy, y = f.inputs   # dy · (1 − y²)
    one = f.node("CastLike", [f.const(np.ones((), np.float32), "one"), y], ["one_like"])
    y2 = f.node("Mul", [y, y], ["y2"])
    f.node("Mul", [dy, f.node("Sub", [one, y2], ["one_minus_y2"])], f.outputs)


relu, relu_grad = _activation(
    "relu", "Relu", lambda x: np.maximum(x, 0), _relu_grad_ref, _relu_grad_body,
    "max(x, 0) (NaN stays NaN)")
sigmoid, sigmoid_grad = _activation(
    "sigmoid", "Sigmoid", _sigmoid, lambda dy, y: dy * y * (1 - y), _sigmoid_grad_body,
    "1 / (1 + e^−x)")
tanh, tanh_grad = _activation(
    "tanh", "Tanh", np.tanh, lambda dy, y: dy * (1 - y * y), _tanh_grad_body, "tanh(x)")
