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


def _lift(g, v, like):
    """``v`` with leading 1s up to the rank of ``like`` (what broadcast_to takes)."""
    lead = len(like.shape) - len(v.shape)
    if not lead:
        return v
    return g.reshape(v, [1] * lead + [-1 if isinstance(d, str) else d for d in v.shape])


def _minmax_grad(op: str, first: bool):
    """d max(a, b) (``op`` "max_grad") or d min(a, b) for a (``first``) or b: a kernel on
    dy's shape (each side broadcast to it first), summed back to the side's shape."""
    def rule(g, dy, a, b, **_):
        x, other = (a, b) if first else (b, a)
        full = [v if tuple(v.shape) == tuple(dy.shape) else g.broadcast_to(_lift(g, v, dy), dy)
                for v in (x, other)]
        return unbroadcast(g, g.apply(op, [dy, *full]), x)
    return rule


def _minmax_grad_infer(dy, x, other):
    expect(dy)
    same_shape(dy, other)
    return [(same_dtype(dy, x, other), same_shape(dy, x))]


def _minmax_grad_ref(op: str):
    def ref(dy, x, other):   # torch: the losing side 0, ties dy / 2, NaN (no order) dy
        lose = x < other if op == "max_grad" else x > other
        return np.where(lose, 0, np.where(x == other, dy / 2, dy)).astype(dy.dtype)
    return ref


def _minmax_grad_body(op: str):
    def body(f):
        dy, x, other = f.inputs
        lose = f.node("Less" if op == "max_grad" else "Greater", [x, other], ["lose"])
        zero = f.node("CastLike", [f.const(np.zeros((), np.float32), "zero"), dy], ["zero_dy"])
        two = f.node("CastLike", [f.const(np.array(2, np.float32), "two"), dy], ["two_dy"])
        tie = f.node("Where", [f.node("Equal", [x, other], ["eq"]),
                               f.node("Div", [dy, two], ["half_dy"]), dy], ["tie"])
        f.node("Where", [lose, zero, tie], f.outputs)
    return body


def _minmax(name: str, onnx_op: str, forward, doc: str):
    grad = f"{name}_grad"
    fn = f"{onnx_op}Grad"
    register(OpDef(
        grad, ("dy", "x", "other"), _minmax_grad_infer, _minmax_grad_ref(grad),
        onnx=lambda b, ins, outs: b.call(fn, ins, outs, _minmax_grad_body(grad)),
        onnx_functions=(fn,), kernel="pointwise_grad",
        doc=f"d{name} for x: x {'<' if name == 'max' else '>'} other ? 0 : "
            "x == other ? dy / 2 : dy (torch's; NaN gives dy)",
    ))
    return register(OpDef(
        name, ("a", "b"), _div_infer, forward,
        grad=(_minmax_grad(grad, True), _minmax_grad(grad, False)),
        onnx=lambda b, ins, outs: b.node(onnx_op, ins, outs), kernel="binary", doc=doc,
    ))


def _nan_first(pick):
    """numpy's maximum/minimum: NaN where either is NaN (as torch's)."""
    return lambda a, b: pick(a, b).astype(np.result_type(a, b))


maximum = _minmax("max", "Max", _nan_first(np.maximum),
                  "elementwise max(a, b), NaN where either is (torch.maximum; numpy "
                  "broadcasting)")
minimum = _minmax("min", "Min", _nan_first(np.minimum),
                  "elementwise min(a, b), NaN where either is (torch.minimum; numpy "
                  "broadcasting)")


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
