"""layer_norm over the last axis (torch.nn.LayerNorm, ONNX LayerNormalization with axis=-1)
and the gradient of its input.

``y = (x − mean) · rstd · scale + bias`` per row, ``rstd = 1 / √(var + eps)`` with the
biased variance. Gradients, with ``x̂ = (x − mean) · rstd`` and ``g = dy · scale``:

- dInput = ``layer_norm_grad``: ``rstd · (g − mean(g) − x̂ · mean(g · x̂))`` per row;
- dScale = Σ over the leading dims of ``dy · x̂`` (``x̂`` is layer_norm without scale/bias);
- dBias  = Σ over the leading dims of ``dy``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import OpDef, dims_match, expect, fmt_shape, register, same_dtype, same_shape
from .elementwise import unbroadcast


def _check_affine(x, v, what):
    expect(v, rank=1, what=what)
    if not dims_match(v.shape[0], x.shape[-1]):
        raise ShapeError(f"{what} '{v.name}' {fmt_shape(v.shape)} must be [{x.shape[-1]}], "
                         f"the last dim of '{x.name}' {fmt_shape(x.shape)}")


def _features(x):
    expect(x)
    if not x.shape or not isinstance(x.shape[-1], int):
        raise ShapeError(f"layer_norm of '{x.name}' {fmt_shape(x.shape)}: the last dim (the "
                         "normalized one) must be fixed")


def _infer(x, scale=None, bias=None, *, epsilon):
    _features(x)
    for v, what in ((scale, "scale"), (bias, "bias")):
        if v is not None:
            _check_affine(x, v, what)
    return [(same_dtype(*[v for v in (x, scale, bias) if v is not None]), x.shape)]


def _grad_infer(dy, x, scale, *, epsilon):
    _features(x)
    _check_affine(x, scale, "scale")
    return [(same_dtype(dy, x, scale), same_shape(dy, x))]


def _stats(x, epsilon):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return mean, 1 / np.sqrt(var + epsilon)


def _ref(x, scale=None, bias=None, *, epsilon):
    mean, rstd = _stats(x, epsilon)
    y = (x - mean) * rstd
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def _grad_ref(dy, x, scale, *, epsilon):
    mean, rstd = _stats(x, epsilon)
    xhat = (x - mean) * rstd
    g = dy * scale
    a = g.mean(axis=-1, keepdims=True)
    b = (g * xhat).mean(axis=-1, keepdims=True)
    return (rstd * (g - a - xhat * b)).astype(dy.dtype)


def _normalized(f, x):
    """x̂ = (x − mean) · rstd and rstd, over the last axis (the ONNX LayerNormalization
    equations), with the call's ``epsilon``."""
    axes = f.const(np.array([-1], np.int64), "axes")
    mean = f.node("ReduceMean", [x, axes], ["mean"], keepdims=1)
    d = f.node("Sub", [x, mean], ["d"])
    var = f.node("ReduceMean", [f.node("Mul", [d, d], ["d2"]), axes], ["var"], keepdims=1)
    rstd = f.node("Reciprocal", [f.node("Sqrt", [f.node("Add", [var, f.attr("epsilon", x)],
                                                        ["var_eps"])], ["std"])], ["rstd"])
    return f.node("Mul", [d, rstd], ["xhat"]), rstd, axes


def _plain_body(f):
    xhat, _, _ = _normalized(f, f.inputs[0])
    f.node("Identity", [xhat], f.outputs)


def _onnx(b, ins, outs, epsilon):
    if len(ins) == 1:   # ONNX LayerNormalization needs a scale: no affine part is a function
        b.call("LayerNorm", ins, outs, _plain_body, epsilon=epsilon)
    else:
        b.node("LayerNormalization", ins, outs, axis=-1, epsilon=float(epsilon))


def _grad_body(f):
    dy, x, scale = f.inputs
    xhat, rstd, axes = _normalized(f, x)
    g = f.node("Mul", [dy, scale], ["g"])
    a = f.node("ReduceMean", [g, axes], ["mean_g"], keepdims=1)
    gx = f.node("ReduceMean", [f.node("Mul", [g, xhat], ["g_xhat"]), axes], ["mean_gx"],
                keepdims=1)
    centered = f.node("Sub", [f.node("Sub", [g, a], ["g_a"]),
                              f.node("Mul", [xhat, gx], ["xhat_gx"])], ["centered"])
    f.node("Mul", [rstd, centered], f.outputs)


layer_norm_grad = register(OpDef(
    "layer_norm_grad", ("dy", "x", "scale"), _grad_infer, _grad_ref,
    onnx=lambda b, ins, outs, epsilon: b.call("LayerNormGrad", ins, outs, _grad_body,
                                              epsilon=epsilon),
    onnx_functions=("LayerNormGrad",), attrs={"epsilon": 1e-5}, kernel="layer_norm_grad",
    doc="dInput of layer_norm: rstd · (g − mean(g) − x̂ · mean(g·x̂)), g = dy · scale",
))


def _dx(g, dy, x, scale=None, bias=None, *, epsilon, **_):
    if scale is None:
        c = x.shape[-1]
        scale = g.const(np.ones(c, x.dtype), "layer_norm.ones")
    return g.apply("layer_norm_grad", [dy, x, scale], epsilon=epsilon)


def _dscale(g, dy, x, scale, bias=None, *, epsilon, **_):
    xhat = g.apply("layer_norm", [x], epsilon=epsilon)
    return unbroadcast(g, g.mul(dy, xhat), scale)


layer_norm = register(OpDef(
    "layer_norm", ("x", "scale?", "bias?"), _infer, _ref,
    grad=(_dx, _dscale, lambda g, dy, x, scale, bias, **_: unbroadcast(g, dy, bias)),
    onnx=_onnx, onnx_functions=("LayerNorm",), attrs={"epsilon": 1e-5}, kernel="layer_norm",
    doc="(x − mean) / √(var + eps) · scale + bias over the last axis",
))
