"""Simple math on tensors: neg, abs, sqrt, log, reciprocal and pow by a constant exponent
(torch's ``-x``, ``abs``, ``sqrt``, ``log``, ``reciprocal``, ``x ** p``), and their gradients.

The gradients are torch's derivative formulas: ``-dy``; ``dy · sgn(x)`` (sgn(0) = 0 and,
as torch's ``sgn`` gives, sgn(NaN) = 0); ``dy / (2 · sqrt(x))``; ``dy / x``;
``-dy · (y · y)``; ``pow_backward``: 0 where p == 0, else ``dy · (p · x^(p−1))``. torch's
``pow`` takes shortcuts for some exponents (0.5: sqrt, 2: x·x, 3: x·x·x, −0.5: 1/sqrt,
−1: 1/x, −2: 1/(x·x)); lincompile's kernels take the same ones (:func:`pow_form`).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .activations_exp import const, grad_infer, unary_infer
from .base import OpDef, register

#: torch's shortcuts of ``x.pow(p)`` (ATen's pow_tensor_scalar_optimized_kernel, ``pow_out``)
POW_FORMS = {0.5: "sqrt", 2.0: "square", 3.0: "cube", -0.5: "rsqrt", -1.0: "recip",
             -2.0: "recip_square", 1.0: "identity"}


def pow_form(p: float) -> str:
    """How ``x^p`` is computed: one of torch's shortcuts, or ``"pow"``."""
    return POW_FORMS.get(float(p), "pow")


def pow_ref(x: np.ndarray, p: float) -> np.ndarray:
    """``x^p`` as torch computes it (its shortcuts, else pow)."""
    form = pow_form(p)
    with np.errstate(all="ignore"):
        y = {"sqrt": lambda: np.sqrt(x), "square": lambda: x * x, "cube": lambda: x * x * x,
             "rsqrt": lambda: 1 / np.sqrt(x), "recip": lambda: 1 / x,
             "recip_square": lambda: 1 / (x * x), "identity": lambda: x,
             "pow": lambda: np.power(x, x.dtype.type(p))}[form]()
    return np.asarray(y).astype(x.dtype)


def _minus_one(g, like):
    return g.const(np.array(-1, like.dtype), g.fresh("minus_one"))


# -------------------------------------------------------------------------------- neg
neg = register(OpDef(
    "neg", ("x",), unary_infer, lambda x: np.negative(x),
    grad=(lambda g, dy, x, **_: g.apply("neg", [dy]),),   # torch: grad.neg()
    onnx=lambda b, ins, outs: b.node("Neg", ins, outs), kernel="pointwise",
    doc="−x (torch's -x, torch.neg)",
))


# -------------------------------------------------------------------------------- abs
def _abs_grad_ref(dy, x):
    sgn = np.where(x > 0, 1, np.where(x < 0, -1, 0)).astype(dy.dtype)   # sgn(NaN) = 0
    return (dy * sgn).astype(dy.dtype)


def _abs_grad_body(f):
    dy, x = f.inputs   # dy · sgn(x), sgn(NaN) = 0 (ONNX's Sign gives NaN there)
    zero = const(f, 0, "zero", x)
    sgn = f.node("Where", [f.node("Greater", [x, zero], ["pos"]), const(f, 1, "one", x),
                           f.node("Where", [f.node("Less", [x, zero], ["neg"]),
                                            const(f, -1, "minus_one", x), zero], ["sgn_neg"])],
                 ["sgn"])
    f.node("Mul", [dy, sgn], f.outputs)


abs_grad = register(OpDef(
    "abs_grad", ("dy", "x"), grad_infer, _abs_grad_ref,
    onnx=lambda b, ins, outs: b.call("AbsGrad", ins, outs, _abs_grad_body),
    onnx_functions=("AbsGrad",), kernel="pointwise_grad",
    doc="dabs: dy · sgn(x) (sgn(0) = sgn(NaN) = 0, as torch's)",
))

abs_ = register(OpDef(
    "abs", ("x",), unary_infer, lambda x: np.abs(x),
    grad=(lambda g, dy, x, **_: g.apply("abs_grad", [dy, x]),),
    onnx=lambda b, ins, outs: b.node("Abs", ins, outs), kernel="pointwise",
    doc="|x| (torch.abs)",
))


# ----------------------------------------------------------------- sqrt, log, reciprocal
def _sqrt_grad(g, dy, x, *, y, **_):
    two = g.const(np.array(2, y.dtype), g.fresh("two"))
    return g.apply("div", [dy, g.mul(two, y)])   # torch: grad / (2 * result)


sqrt = register(OpDef(
    "sqrt", ("x",), unary_infer, lambda x: np.sqrt(x),
    grad=(_sqrt_grad,),
    onnx=lambda b, ins, outs: b.node("Sqrt", ins, outs), kernel="pointwise",
    domains=("positive",), doc="√x (torch.sqrt; NaN for x < 0)",
))

log = register(OpDef(
    "log", ("x",), unary_infer, lambda x: np.log(x),
    grad=(lambda g, dy, x, **_: g.apply("div", [dy, x]),),   # torch: grad / self
    onnx=lambda b, ins, outs: b.node("Log", ins, outs), kernel="pointwise",
    domains=("positive",), doc="ln x (torch.log; −Inf at 0, NaN for x < 0)",
))


def _reciprocal_grad(g, dy, x, *, y, **_):
    return g.mul(g.apply("neg", [dy]), g.mul(y, y))   # torch: -grad * (result * result)


reciprocal = register(OpDef(
    "reciprocal", ("x",), unary_infer, lambda x: np.reciprocal(x),
    grad=(_reciprocal_grad,),
    onnx=lambda b, ins, outs: b.node("Reciprocal", ins, outs), kernel="pointwise",
    doc="1 / x (torch.reciprocal)",
))


# -------------------------------------------------------------------------------- pow
def _pow_infer(x, *rest, exponent):
    if not math.isfinite(exponent):
        raise ShapeError(f"pow: exponent must be finite, got {exponent}")
    return grad_infer(x, *rest) if rest else unary_infer(x)


def _pow_grad_ref(dy, x, *, exponent):
    if exponent == 0:   # torch: zeros_like(self), whatever dy is
        return np.zeros_like(dy)
    with np.errstate(all="ignore"):
        p = dy.dtype.type(exponent)
        return (dy * (p * pow_ref(x, exponent - 1))).astype(dy.dtype)


def _pow_of(f, x: str, p, form: str) -> str:
    """``x^p()`` in a function body (``p`` makes the exponent's tensor): ``Sqrt`` where
    torch takes its sqrt/rsqrt shortcut (``Pow`` gives +Inf and 0 at x = −Inf where torch's
    sqrt gives NaN), else ``Pow``."""
    if form == "sqrt":
        return f.node("Sqrt", [x], ["sqrt_x"])
    if form == "rsqrt":
        return f.node("Reciprocal", [f.node("Sqrt", [x], ["sqrt_x"])], ["rsqrt_x"])
    return f.node("Pow", [x, p()], ["x_p"])


#: the ONNX function of each exponent form with a body of its own (the others: PowScalar)
POW_FUNCTIONS = {"sqrt": "PowSqrt", "rsqrt": "PowRsqrt"}
#: the same for the gradient, by the form of x^(p − 1)
POW_GRAD_FUNCTIONS = {"sqrt": "PowScalarGradSqrt", "rsqrt": "PowScalarGradRsqrt"}


def _pow_body(form: str):
    def body(f):
        (x,) = f.inputs
        p = lambda: f.attr("exponent", x)   # (read by the Pow form only)
        f.node("Identity", [_pow_of(f, x, p, form)], f.outputs)
    return body


def _pow_onnx(b, ins, outs, exponent):
    form = pow_form(exponent)
    if form in POW_FUNCTIONS:   # the exponent is the function's own (function_attrs)
        b.call(POW_FUNCTIONS[form], ins, outs, _pow_body(form))
    else:
        b.call("PowScalar", ins, outs, _pow_body("pow"), exponent=exponent)


def _pow_grad_body(form: str):
    def body(f):
        dy, x = f.inputs   # p == 0 ? 0 : dy · (p · x^(p − 1))
        p = f.attr("exponent", x)
        one, zero = const(f, 1, "one", x), const(f, 0, "zero", x)
        xp = _pow_of(f, x, lambda: f.node("Sub", [p, one], ["pm1"]), form)
        d = f.node("Mul", [p, xp], ["d"])
        f.node("Where", [f.node("Equal", [p, zero], ["p0"]), const(f, 0, "zero_dy", dy),
                         f.node("Mul", [dy, d], ["dyd"])], f.outputs)
    return body


def _pow_grad_onnx(b, ins, outs, exponent):
    form = pow_form(exponent - 1) if exponent != 0 else "pow"
    fn = POW_GRAD_FUNCTIONS.get(form, "PowScalarGrad")
    b.call(fn, ins, outs, _pow_grad_body(form if fn != "PowScalarGrad" else "pow"),
           exponent=exponent)


pow_grad = register(OpDef(
    "pow_grad", ("dy", "x"), _pow_infer, _pow_grad_ref,
    onnx=_pow_grad_onnx, onnx_functions=("PowScalarGrad", *POW_GRAD_FUNCTIONS.values()),
    attrs={"exponent": 1.0}, kernel="pointwise_grad",
    doc="dpow: exponent == 0 ? 0 : dy · exponent · x^(exponent − 1) (torch's pow_backward)",
))

pow_ = register(OpDef(
    "pow", ("x",), _pow_infer, lambda x, *, exponent: pow_ref(x, exponent),
    grad=(lambda g, dy, x, *, exponent, **_: g.apply("pow_grad", [dy, x], exponent=exponent),),
    onnx=_pow_onnx, onnx_functions=("PowScalar", *POW_FUNCTIONS.values()),
    function_attrs={"PowSqrt": {"exponent": 0.5}, "PowRsqrt": {"exponent": -0.5}},
    attrs={"exponent": 1.0}, kernel="pointwise",
    doc="x^exponent, a constant exponent (torch's x ** p, x.pow(p); ONNX Pow by a constant)",
))
