"""Smooth activations of torch.nn built on exp: ELU, SELU, CELU, Softplus, Mish, Softsign and
exp (Keras' ``exponential``), and their gradients.

The formulas are torch's CPU kernels (``elu_backward``, ``softplus_backward``,
``mish_backward``, autograd of ``x / (1 + |x|)``), so values, NaN and ±Inf come out as
torch's do. Where torch's scalar and vectorized CPU loops disagree on NaN (``elu_backward``
of a NaN x: dy on the scalar tail of a tensor, NaN in the vectorized body), lincompile
follows the vectorized loop, which every element but the last few of a tensor takes.

SELU and CELU are torch's ``elu(x, alpha, scale, input_scale)``; like torch, CELU's gradient
takes ``input_scale = 1 / float32(alpha)`` (torch's derivative formula rounds alpha to
float) while its forward takes ``1 / alpha``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import OpDef, expect, register, same_dtype, same_shape

#: torch's SELU constants (torch/csrc/api and ATen's Activation.cpp), also ONNX Selu's
#: defaults rounded to float32
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
INF = math.inf


def unary_infer(x, **_):
    expect(x)
    return [(x.dtype, x.shape)]


def grad_infer(dy, x, **_):
    expect(dy)
    return [(same_dtype(dy, x), same_shape(dy, x))]


def const(f, value: float, name: str, like: str) -> str:
    """A float constant of ``like``'s dtype inside a function body."""
    return f.node("CastLike", [f.const(np.array(value, np.float32), f"{name}_f"), like], [name])


def _where(c, a, b, dtype):
    return np.where(c, a, b).astype(dtype)


# -------------------------------------------------------------------- elu, selu, celu
def elu_constants(op: str, alpha: float = 1.0) -> tuple[float, float, float]:
    """(alpha, scale, input_scale) of torch's ``elu`` that op ``op`` is (``*_grad`` ops:
    those of torch's derivative, which differ for CELU)."""
    if op.startswith("selu"):
        return SELU_ALPHA, SELU_SCALE, 1.0
    if op == "celu":
        return alpha, 1.0, 1 / alpha
    if op == "celu_grad":
        return alpha, 1.0, 1 / float(np.float32(alpha))
    return alpha, 1.0, 1.0


def _check_alpha(op: str):
    def infer(x, *rest, alpha=1.0):
        if op.startswith("celu") and alpha == 0:
            raise ShapeError(f"{op}: alpha must not be 0")
        return grad_infer(x, *rest) if rest else unary_infer(x)
    return infer


def _elu_ref(op: str):
    def ref(x, **attrs):
        a, s, i = elu_constants(op, **attrs)   # x > 0 ? x·s : expm1(x·i)·(a·s)
        return _where(x > 0, x * s, np.expm1(x * i) * (a * s), x.dtype)
    return ref


def _elu_grad_ref(op: str):
    def ref(dy, x, **attrs):
        a, s, i = elu_constants(op, **attrs)   # torch: x > 0 ? dy·s : dy·i·(a·s)·e^(x·i)
        return _where(x > 0, dy * s, dy * i * (a * s) * np.exp(x * i), dy.dtype)
    return ref


def _elu_grad_body(op: str):
    def body(f):
        dy, x = f.inputs
        if op == "elu_grad":
            a, i = f.attr("alpha", x), None
        elif op == "celu_grad":
            a = f.attr("alpha", x)
            i = f.node("Reciprocal", [a], ["inv_alpha"])
        else:
            a, i = const(f, SELU_ALPHA * SELU_SCALE, "alpha_scale", x), None
        pos = dy if op != "selu_grad" else f.node("Mul", [dy, const(f, SELU_SCALE, "scale", x)],
                                                   ["dy_scale"])
        xi = x if i is None else f.node("Mul", [x, i], ["xi"])
        dyi = dy if i is None else f.node("Mul", [dy, i], ["dyi"])
        neg = f.node("Mul", [f.node("Mul", [dyi, a], ["dya"]), f.node("Exp", [xi], ["e"])],
                     ["neg"])
        f.node("Where", [f.node("Greater", [x, const(f, 0, "zero", x)], ["pos"]), pos, neg],
               f.outputs)
    return body


def _celu_body(f):
    (x,) = f.inputs   # x > 0 ? x : (e^(x/α) − 1)·α
    a = f.attr("alpha", x)
    e = f.node("Exp", [f.node("Mul", [x, f.node("Reciprocal", [a], ["inv_alpha"])], ["xi"])],
               ["e"])
    neg = f.node("Mul", [f.node("Sub", [e, const(f, 1, "one", x)], ["em1"]), a], ["neg"])
    f.node("Where", [f.node("Greater", [x, const(f, 0, "zero", x)], ["pos"]), x, neg],
           f.outputs)


def _elu_family(name: str, onnx, attrs: dict, doc: str) -> None:
    fn = {"elu": "EluGrad", "selu": "SeluGrad", "celu": "CeluGrad"}[name]
    kw = (lambda a: {"alpha": a["alpha"]}) if attrs else (lambda a: {})
    grad = register(OpDef(
        f"{name}_grad", ("dy", "x"), _check_alpha(f"{name}_grad"), _elu_grad_ref(f"{name}_grad"),
        onnx=lambda b, ins, outs, **a: b.call(fn, ins, outs, _elu_grad_body(f"{name}_grad"),
                                              **kw(a)),
        onnx_functions=(fn,), attrs=dict(attrs), kernel="pointwise_grad",
        doc=f"d{name} (torch's elu_backward of the input x)",
    ))
    register(OpDef(
        name, ("x",), _check_alpha(name), _elu_ref(name),
        grad=(lambda g, dy, x, **a: g.apply(grad.name, [dy, x],
                                            **{k: a[k] for k in attrs}),),
        onnx=onnx, onnx_functions=("Celu",) if name == "celu" else (), attrs=dict(attrs),
        kernel="pointwise", doc=doc,
    ))


_elu_family("elu", lambda b, ins, outs, alpha: b.node("Elu", ins, outs, alpha=float(alpha)),
            {"alpha": 1.0}, "x > 0 ? x : alpha · (e^x − 1) (torch.nn.ELU)")
_elu_family("selu", lambda b, ins, outs: b.node("Selu", ins, outs, alpha=SELU_ALPHA,
                                                gamma=SELU_SCALE),
            {}, "scale · elu(x, alpha) with torch's SELU constants (torch.nn.SELU)")
_elu_family("celu", lambda b, ins, outs, alpha: b.call("Celu", ins, outs, _celu_body,
                                                       alpha=alpha),
            {"alpha": 1.0}, "x > 0 ? x : alpha · (e^(x/alpha) − 1) (torch.nn.CELU)")


# --------------------------------------------------------------------------- softplus
def _softplus_ref(x, *, beta, threshold):
    z = x * beta   # log(1 + e^z) / β, stable on both tails; x itself where z > threshold
    sp = (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))) / beta
    return _where(z > threshold, x, sp, x.dtype)


def _softplus_grad_ref(dy, x, *, beta, threshold):
    z = x * beta   # torch: z > threshold ? dy : dy · e^z / (e^z + 1), i.e. dy · sigmoid(z)
    e = np.exp(-np.abs(z))
    s = np.where(z >= 0, dy / (1 + e), dy * e / (1 + e))
    return _where(z > threshold, dy, s, dy.dtype)


def _softplus_body(f):
    (x,) = f.inputs   # what torch's dynamo exporter writes
    z = f.node("Mul", [x, f.attr("beta", x)], ["z"])
    sp = f.node("Div", [f.node("Softplus", [z], ["sp_z"]), f.attr("beta", x)], ["sp"])
    over = f.node("Greater", [z, f.attr("threshold", x)], ["over"])
    f.node("Where", [over, x, sp], f.outputs)


def _softplus_grad_body(f):
    dy, x = f.inputs
    z = f.node("Mul", [x, f.attr("beta", x)], ["z"])
    over = f.node("Greater", [z, f.attr("threshold", x)], ["over"])
    ds = f.node("Mul", [dy, f.node("Sigmoid", [z], ["s"])], ["ds"])
    f.node("Where", [over, dy, ds], f.outputs)


def _softplus_onnx(b, ins, outs, beta, threshold):
    if beta == 1 and threshold == INF:   # ONNX's Softplus exactly
        b.node("Softplus", ins, outs)
    else:
        b.call("Softplus", ins, outs, _softplus_body, beta=beta, threshold=threshold)


def _softplus_infer(x, *rest, beta, threshold):
    if beta == 0 or not math.isfinite(beta):
        raise ShapeError(f"softplus: beta must be finite and nonzero, got {beta}")
    return grad_infer(x, *rest) if rest else unary_infer(x)


SOFTPLUS = {"beta": 1.0, "threshold": 20.0}

softplus_grad = register(OpDef(
    "softplus_grad", ("dy", "x"), _softplus_infer, _softplus_grad_ref,
    onnx=lambda b, ins, outs, **a: b.call("SoftplusGrad", ins, outs, _softplus_grad_body, **a),
    onnx_functions=("SoftplusGrad",), attrs=dict(SOFTPLUS), kernel="pointwise_grad",
    doc="dsoftplus: x·beta > threshold ? dy : dy · sigmoid(x·beta)",
))

softplus = register(OpDef(
    "softplus", ("x",), _softplus_infer, _softplus_ref,
    grad=(lambda g, dy, x, *, beta, threshold, **_: g.apply(
        "softplus_grad", [dy, x], beta=beta, threshold=threshold),),
    onnx=_softplus_onnx, onnx_functions=("Softplus",), attrs=dict(SOFTPLUS), kernel="pointwise",
    doc="x·beta > threshold ? x : log(1 + e^(x·beta)) / beta (torch.nn.Softplus, defaults "
        "beta 1, threshold 20; ONNX's Softplus is beta 1, threshold inf)",
))


# ------------------------------------------------------------------------------- mish
def _mish_ref(x):
    return (x * np.tanh(np.log1p(np.exp(x)))).astype(x.dtype)


def _mish_grad_ref(dy, x):
    s = 1 / (1 + np.exp(-x))   # torch: dy · (tsp + x · s · (1 − tsp²)), tsp = tanh(softplus)
    tsp = np.tanh(np.log1p(np.exp(x)))
    return (dy * (tsp + x * s * (1 - tsp * tsp))).astype(dy.dtype)


def _mish_grad_body(f):
    dy, x = f.inputs
    s = f.node("Sigmoid", [x], ["s"])
    t = f.node("Tanh", [f.node("Softplus", [x], ["sp"])], ["t"])
    one_t2 = f.node("Sub", [const(f, 1, "one", x), f.node("Mul", [t, t], ["t2"])], ["one_t2"])
    xs = f.node("Mul", [f.node("Mul", [x, s], ["xs0"]), one_t2], ["xs"])
    f.node("Mul", [dy, f.node("Add", [t, xs], ["d"])], f.outputs)


mish_grad = register(OpDef(
    "mish_grad", ("dy", "x"), grad_infer, _mish_grad_ref,
    onnx=lambda b, ins, outs: b.call("MishGrad", ins, outs, _mish_grad_body),
    onnx_functions=("MishGrad",), kernel="pointwise_grad",
    doc="dmish: dy · (t + x · sigmoid(x) · (1 − t²)), t = tanh(softplus(x))",
))

mish = register(OpDef(
    "mish", ("x",), unary_infer, _mish_ref,
    grad=(lambda g, dy, x, **_: g.apply("mish_grad", [dy, x]),),
    onnx=lambda b, ins, outs: b.node("Mish", ins, outs), kernel="pointwise",
    doc="x · tanh(log(1 + e^x)) (torch.nn.Mish)",
))


# --------------------------------------------------------------------------- softsign
def _softsign_grad_ref(dy, x):
    d = np.abs(x) + 1   # torch's autograd of x / (|x| + 1): dy/d − dy·(x/d)/d · sgn(x)
    return (dy / d + (-dy * ((x / d) / d)) * np.sign(x)).astype(dy.dtype)


def _softsign_grad_body(f):
    dy, x = f.inputs
    d = f.node("Add", [f.node("Abs", [x], ["ax"]), const(f, 1, "one", x)], ["d"])
    q = f.node("Div", [f.node("Div", [x, d], ["xd"]), d], ["q"])
    back = f.node("Mul", [f.node("Mul", [f.node("Neg", [dy], ["ndy"]), q], ["nq"]),
                          f.node("Sign", [x], ["sgn"])], ["back"])
    f.node("Add", [f.node("Div", [dy, d], ["direct"]), back], f.outputs)


softsign_grad = register(OpDef(
    "softsign_grad", ("dy", "x"), grad_infer, _softsign_grad_ref,
    onnx=lambda b, ins, outs: b.call("SoftsignGrad", ins, outs, _softsign_grad_body),
    onnx_functions=("SoftsignGrad",), kernel="pointwise_grad",
    doc="dsoftsign: dy / (1 + |x|)², as torch's autograd of x / (|x| + 1) computes it",
))

softsign = register(OpDef(
    "softsign", ("x",), unary_infer, lambda x: (x / (np.abs(x) + 1)).astype(x.dtype),
    grad=(lambda g, dy, x, **_: g.apply("softsign_grad", [dy, x]),),
    onnx=lambda b, ins, outs: b.node("Softsign", ins, outs), kernel="pointwise",
    doc="x / (1 + |x|) (torch.nn.Softsign)",
))


# -------------------------------------------------------------------------------- exp
exp = register(OpDef(
    "exp", ("x",), unary_infer, lambda x: np.exp(x).astype(x.dtype),
    grad=(lambda g, dy, x, *, y, **_: g.mul(dy, y),),   # torch: grad · result
    onnx=lambda b, ins, outs: b.node("Exp", ins, outs), kernel="pointwise",
    doc="e^x (torch.exp; Keras' exponential activation)",
))
