"""The activations of torch.nn beyond ReLU/Sigmoid/Tanh: LeakyReLU, GELU (erf and tanh
forms) and SiLU, and their gradients.

The formulas are torch's CPU kernels, so NaN and ±Inf come out where torch's do: a
gradient takes the *input* x (as torch's backward does), ``leaky_relu_grad(NaN)`` is
``alpha · dy`` and ``gelu(−Inf)`` is NaN (``−Inf · 0``), like torch.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import OpDef, expect, register, same_dtype, same_shape

SQRT1_2 = math.sqrt(0.5)
#: tanh-GELU: kBeta = √(2/π), kKappa = 0.044715; the erf form's pdf factor 1/√(2π)
K_BETA, K_KAPPA, K_ALPHA = math.sqrt(2 / math.pi), 0.044715, 1 / math.sqrt(2 * math.pi)
APPROXIMATE = ("none", "tanh")

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function elementwise, in x's dtype (math.erf: NaN in, NaN out)."""
    return np.asarray(_erf(np.asarray(x, np.float64)), np.float64).astype(x.dtype)


def _unary_infer(x, **attrs):
    expect(x)
    _check(attrs)
    return [(x.dtype, x.shape)]


def _grad_infer(dy, x, **attrs):
    expect(dy)
    _check(attrs)
    return [(same_dtype(dy, x), same_shape(dy, x))]


def _check(attrs: dict) -> None:
    if attrs.get("approximate", "none") not in APPROXIMATE:
        raise ShapeError(f"gelu: approximate={attrs['approximate']!r}, expected one of "
                         f"{list(APPROXIMATE)}")


def _c(f, value: float, name: str, like: str) -> str:
    """A float constant of ``like``'s dtype inside a function body."""
    return f.node("CastLike", [f.const(np.array(value, np.float32), f"{name}_f"), like], [name])


# ------------------------------------------------------------------------- leaky_relu
def _leaky_grad_body(f):
    dy, x = f.inputs   # torch: x > 0 ? dy : dy · alpha (a NaN x takes the second branch)
    pos = f.node("Greater", [x, _c(f, 0, "zero", x)], ["pos"])
    f.node("Where", [pos, dy, f.node("Mul", [dy, f.attr("alpha", dy)], ["dy_alpha"])],
           f.outputs)


leaky_relu_grad = register(OpDef(
    "leaky_relu_grad", ("dy", "x"), _grad_infer,
    lambda dy, x, *, alpha: np.where(x > 0, dy, dy * alpha).astype(dy.dtype),
    onnx=lambda b, ins, outs, alpha: b.call("LeakyReluGrad", ins, outs, _leaky_grad_body,
                                            alpha=alpha),
    onnx_functions=("LeakyReluGrad",), attrs={"alpha": 0.01}, kernel="pointwise_grad",
    doc="dleaky_relu: x > 0 ? dy : alpha · dy",
))

leaky_relu = register(OpDef(
    "leaky_relu", ("x",), _unary_infer,
    lambda x, *, alpha: np.where(x > 0, x, x * alpha).astype(x.dtype),
    grad=(lambda g, dy, x, *, alpha, **_: g.apply("leaky_relu_grad", [dy, x], alpha=alpha),),
    onnx=lambda b, ins, outs, alpha: b.node("LeakyRelu", ins, outs, alpha=float(alpha)),
    attrs={"alpha": 0.01}, kernel="pointwise",
    doc="x > 0 ? x : alpha · x (torch.nn.LeakyReLU, default alpha 0.01)",
))


# ------------------------------------------------------------------------------- gelu
def _gelu_ref(x, *, approximate):
    if approximate == "tanh":
        inner = K_BETA * (x + K_KAPPA * x * x * x)
        return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)
    return (x * 0.5 * (1 + erf(x * SQRT1_2))).astype(x.dtype)


def _gelu_grad_ref(dy, x, *, approximate):
    if approximate == "tanh":
        t = np.tanh(K_BETA * (x + K_KAPPA * x * x * x))
        inner_d = K_BETA * (1 + 3 * K_KAPPA * x * x)
        return (dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * inner_d)).astype(dy.dtype)
    cdf = 0.5 * (1 + erf(x * SQRT1_2))
    pdf = K_ALPHA * np.exp(-0.5 * x * x)
    return (dy * (cdf + x * pdf)).astype(dy.dtype)


def _tanh_inner(f, x):
    """√(2/π) · (x + 0.044715 · x³) and its tanh."""
    x3 = f.node("Mul", [f.node("Mul", [x, x], ["x2"]), x], ["x3"])
    poly = f.node("Add", [x, f.node("Mul", [_c(f, K_KAPPA, "kappa", x), x3], ["kx3"])],
                  ["poly"])
    return f.node("Tanh", [f.node("Mul", [_c(f, K_BETA, "beta", x), poly], ["inner"])], ["t"])


def _gelu_body(f):
    (x,) = f.inputs   # x · 0.5 · (1 + erf(x · √½))
    one = _c(f, 1, "one", x)
    e = f.node("Erf", [f.node("Mul", [x, _c(f, SQRT1_2, "sqrt1_2", x)], ["xs"])], ["erf"])
    half_x = f.node("Mul", [x, _c(f, 0.5, "half", x)], ["half_x"])
    f.node("Mul", [half_x, f.node("Add", [one, e], ["one_erf"])], f.outputs)


def _gelu_tanh_body(f):
    (x,) = f.inputs   # 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))
    t = _tanh_inner(f, x)
    half_x = f.node("Mul", [_c(f, 0.5, "half", x), x], ["half_x"])
    f.node("Mul", [half_x, f.node("Add", [_c(f, 1, "one", x), t], ["one_t"])], f.outputs)


def _gelu_grad_body(f):
    dy, x = f.inputs   # dy · (Φ(x) + x · φ(x))
    half = _c(f, 0.5, "half", x)
    e = f.node("Erf", [f.node("Mul", [x, _c(f, SQRT1_2, "sqrt1_2", x)], ["xs"])], ["erf"])
    cdf = f.node("Mul", [half, f.node("Add", [_c(f, 1, "one", x), e], ["one_erf"])], ["cdf"])
    x2 = f.node("Mul", [f.node("Mul", [x, x], ["x2"]), _c(f, -0.5, "minus_half", x)], ["e_arg"])
    pdf = f.node("Mul", [_c(f, K_ALPHA, "k_alpha", x), f.node("Exp", [x2], ["ex"])], ["pdf"])
    d = f.node("Add", [cdf, f.node("Mul", [x, pdf], ["x_pdf"])], ["d"])
    f.node("Mul", [dy, d], f.outputs)


def _gelu_tanh_grad_body(f):
    dy, x = f.inputs
    one, half = _c(f, 1, "one", x), _c(f, 0.5, "half", x)
    t = _tanh_inner(f, x)
    left_d = f.node("Mul", [half, f.node("Add", [one, t], ["one_t"])], ["left_d"])
    right_d = f.node("Sub", [one, f.node("Mul", [t, t], ["t2"])], ["right_d"])
    k3 = _c(f, 3 * K_KAPPA, "k3", x)
    x2 = f.node("Mul", [x, x], ["xx"])
    inner_d = f.node("Mul", [_c(f, K_BETA, "beta_d", x),
                             f.node("Add", [one, f.node("Mul", [k3, x2], ["k3x2"])], ["p"])],
                     ["inner_d"])
    left = f.node("Mul", [half, x], ["left"])
    prod = f.node("Mul", [f.node("Mul", [left, right_d], ["lr"]), inner_d], ["lri"])
    f.node("Mul", [dy, f.node("Add", [left_d, prod], ["d"])], f.outputs)


def _gelu_onnx(b, ins, outs, approximate):
    if approximate == "tanh":
        b.call("GeluTanh", ins, outs, _gelu_tanh_body)
    else:
        b.call("Gelu", ins, outs, _gelu_body)


def _gelu_grad_onnx(b, ins, outs, approximate):
    if approximate == "tanh":
        b.call("GeluTanhGrad", ins, outs, _gelu_tanh_grad_body)
    else:
        b.call("GeluGrad", ins, outs, _gelu_grad_body)


TANH = {"approximate": "tanh"}

gelu_grad = register(OpDef(
    "gelu_grad", ("dy", "x"), _grad_infer, _gelu_grad_ref, onnx=_gelu_grad_onnx,
    onnx_functions=("GeluGrad", "GeluTanhGrad"), function_attrs={"GeluTanhGrad": TANH},
    attrs={"approximate": "none"}, kernel="pointwise_grad",
    doc="dgelu: dy · (Φ(x) + x · φ(x)), or torch's derivative of the tanh form",
))

gelu = register(OpDef(
    "gelu", ("x",), _unary_infer, _gelu_ref,
    grad=(lambda g, dy, x, *, approximate, **_: g.apply("gelu_grad", [dy, x],
                                                        approximate=approximate),),
    onnx=_gelu_onnx, onnx_functions=("Gelu", "GeluTanh"), function_attrs={"GeluTanh": TANH},
    attrs={"approximate": "none"}, kernel="pointwise",
    doc="x · Φ(x) = x · ½(1 + erf(x/√2)); approximate='tanh': "
        "½x(1 + tanh(√(2/π)(x + 0.044715x³))) (torch.nn.GELU)",
))


# ------------------------------------------------------------------------------- silu
def _silu_body(f):
    (x,) = f.inputs   # x / (1 + e^−x), torch's form
    den = f.node("Add", [_c(f, 1, "one", x), f.node("Exp", [f.node("Neg", [x], ["nx"])],
                                                    ["e"])], ["den"])
    f.node("Div", [x, den], f.outputs)


def _silu_grad_body(f):
    dy, x = f.inputs   # dy · s · (1 + x · (1 − s)), s = sigmoid(x)
    one = _c(f, 1, "one", x)
    s = f.node("Sigmoid", [x], ["s"])
    inner = f.node("Add", [one, f.node("Mul", [x, f.node("Sub", [one, s], ["one_s"])], ["xs"])],
                   ["inner"])
    f.node("Mul", [f.node("Mul", [dy, s], ["dy_s"]), inner], f.outputs)


def _silu_grad_ref(dy, x):
    s = 1 / (1 + np.exp(-x))
    return (dy * s * (1 + x * (1 - s))).astype(dy.dtype)


silu_grad = register(OpDef(
    "silu_grad", ("dy", "x"), _grad_infer, _silu_grad_ref,
    onnx=lambda b, ins, outs: b.call("SiluGrad", ins, outs, _silu_grad_body),
    onnx_functions=("SiluGrad",), kernel="pointwise_grad",
    doc="dsilu: dy · s · (1 + x(1 − s)), s = sigmoid(x)",
))

silu = register(OpDef(
    "silu", ("x",), _unary_infer, lambda x: (x / (1 + np.exp(-x))).astype(x.dtype),
    grad=(lambda g, dy, x, **_: g.apply("silu_grad", [dy, x]),),
    onnx=lambda b, ins, outs: b.call("Silu", ins, outs, _silu_body),
    onnx_functions=("Silu",), kernel="pointwise",
    doc="x · sigmoid(x) = x / (1 + e^−x) (torch.nn.SiLU)",
))
