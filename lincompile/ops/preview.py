"""ONNX's ``ai.onnx.preview.training`` optimizers, exactly as the operator spec defines them.

One node per optimized tensor (an ONNX node updating several tensors imports as one node
per tensor: the spec applies its formula to each independently). ``t`` is the update count
``T`` (0 at the first update), ``r`` the learning rate ``R``. Adagrad is
:data:`lincompile.ops.optim.adagrad` (torch's Adagrad is the same update).

``onnx_momentum`` (ONNX ``Momentum``)::

    g' = norm_coefficient·x + g;  v' = alpha·v + (t > 0 ? beta : 1)·g'
    x' = x − r·v'                  (standard)
    x' = x − r·(g' + alpha·v')     (nesterov)

``onnx_adam`` (ONNX ``Adam``)::

    g' = norm_coefficient·x + g;  v' = alpha·v + (1 − alpha)·g';  h' = beta·h + (1 − beta)·g'²
    r' = t > 0 ? r·√(1 − beta^t) / (1 − alpha^t) : r
    x' = (1 − norm_coefficient_post)·(x − r'·v' / (√h' + epsilon))
"""

from __future__ import annotations

import numpy as np

from .base import FLOATS, OpDef, expect, register, same_shape, scalar

#: The ONNX domain of these ops (and of ``Adagrad`` and ``Gradient``).
DOMAIN = "ai.onnx.preview.training"


def _infer(x, *rest, **_):
    *state, t, r = rest   # grad, then the optimizer state
    expect(x, what="parameter")
    for s in state:
        same_shape(x, s)
    scalar(t, ("int64",), "update count")
    scalar(r, FLOATS, "learning rate")
    return [(x.dtype, x.shape)] * len(state)


# ------------------------------------------------------------------------- Momentum
def _momentum_ref(x, g, v, t, r, *, norm_coefficient, alpha, beta, nesterov):
    g = norm_coefficient * x + g
    v = alpha * v + (beta if t > 0 else 1) * g
    x = x - r * (g + alpha * v if nesterov else v)
    return x.astype(g.dtype), v.astype(g.dtype)


def _gt0(f, t):
    return f.node("Greater", [t, f.const(np.array(0, np.int64), "zero_i")], ["t_gt_0"])


def _momentum_body(f):
    x, g, v, t, r = f.inputs
    one = f.node("CastLike", [f.const(np.array(1, np.float32), "one"), x], ["one_like"])
    zero = f.node("CastLike", [f.const(np.array(0, np.float32), "zero"), x], ["zero_like"])
    alpha = f.attr("alpha", x)
    g = f.node("Add", [f.node("Mul", [f.attr("norm_coefficient", x), x], ["decay"]), g], ["g"])
    beta = f.node("Where", [_gt0(f, t), f.attr("beta", x), one], ["beta_t"])
    v2 = f.node("Add", [f.node("Mul", [alpha, v], ["av"]), f.node("Mul", [beta, g], ["bg"])],
                [f.outputs[1]])
    nesterov = f.node("Greater", [f.attr("nesterov", x), zero], ["is_nesterov"])
    ahead = f.node("Add", [g, f.node("Mul", [alpha, v2], ["av2"])], ["ahead"])
    direction = f.node("Where", [nesterov, ahead, v2], ["direction"])
    step = f.node("Mul", [f.node("CastLike", [r, x], ["r_like"]), direction], ["step"])
    f.node("Sub", [x, step], [f.outputs[0]])


onnx_momentum = register(OpDef(
    "onnx_momentum", ("x", "g", "v", "t", "r"), _infer, _momentum_ref,
    onnx=lambda b, ins, outs, *, nesterov, **attrs: b.call(
        "PreviewMomentum", ins, outs, _momentum_body, nesterov=float(bool(nesterov)), **attrs),
    onnx_functions=("PreviewMomentum",),
    attrs={"norm_coefficient": 0.0, "alpha": 0.9, "beta": 1.0, "nesterov": False},
    kernel="onnx_momentum", domains=(None, None, None, "count", "positive"),
    doc="ONNX Momentum: v' = alpha·v + (t > 0 ? beta : 1)·(g + nc·x); x −= r·v' "
        "(nesterov: r·(g + nc·x + alpha·v'))",
))


# ----------------------------------------------------------------------------- Adam
def _adam_ref(x, g, v, h, t, r, *, norm_coefficient, norm_coefficient_post, alpha, beta,
              epsilon):
    g = norm_coefficient * x + g
    v = alpha * v + (1 - alpha) * g
    h = beta * h + (1 - beta) * (g * g)
    rt = r * np.sqrt(1 - beta**t) / (1 - alpha**t) if t > 0 else r
    x = (1 - norm_coefficient_post) * (x - rt * (v / (np.sqrt(h) + epsilon)))
    return x.astype(g.dtype), v.astype(g.dtype), h.astype(g.dtype)


def _adam_body(f):
    x, g, v, h, t, r = f.inputs
    one = f.node("CastLike", [f.const(np.array(1, np.float32), "one"), x], ["one_like"])
    one_r = f.node("CastLike", [one, r], ["one_r"])
    alpha, beta = f.attr("alpha", x), f.attr("beta", x)
    g = f.node("Add", [f.node("Mul", [f.attr("norm_coefficient", x), x], ["decay"]), g], ["g"])
    v2 = f.node("Add", [f.node("Mul", [alpha, v], ["av"]),
                        f.node("Mul", [f.node("Sub", [one, alpha], ["1-alpha"]), g], ["ag"])],
                [f.outputs[1]])
    gg = f.node("Mul", [g, g], ["gg"])
    h2 = f.node("Add", [f.node("Mul", [beta, h], ["bh"]),
                        f.node("Mul", [f.node("Sub", [one, beta], ["1-beta"]), gg], ["bgg"])],
                [f.outputs[2]])
    tf = f.node("CastLike", [t, r], ["t_float"])
    beta_r = f.node("CastLike", [beta, r], ["beta_r"])
    alpha_r = f.node("CastLike", [alpha, r], ["alpha_r"])
    bc2 = f.node("Sub", [one_r, f.node("Pow", [beta_r, tf], ["beta_t"])], ["bc2"])
    bc1 = f.node("Sub", [one_r, f.node("Pow", [alpha_r, tf], ["alpha_t"])], ["bc1"])
    corrected = f.node("Div", [f.node("Mul", [r, f.node("Sqrt", [bc2], ["sqrt_bc2"])],
                                      ["r_sqrt_bc2"]), bc1], ["r_corrected"])
    rt = f.node("CastLike", [f.node("Where", [_gt0(f, t), corrected, r], ["r_t"]), x],
                ["r_like"])
    denom = f.node("Add", [f.node("Sqrt", [h2], ["sqrt_h"]), f.attr("epsilon", x)], ["denom"])
    x2 = f.node("Sub", [x, f.node("Mul", [rt, f.node("Div", [v2, denom], ["ratio"])],
                                  ["update"])], ["x_new"])
    keep = f.node("Sub", [one, f.attr("norm_coefficient_post", x)], ["keep"])
    f.node("Mul", [keep, x2], [f.outputs[0]])


onnx_adam = register(OpDef(
    "onnx_adam", ("x", "g", "v", "h", "t", "r"), _infer, _adam_ref,
    onnx=lambda b, ins, outs, **attrs: b.call("PreviewAdam", ins, outs, _adam_body, **attrs),
    onnx_functions=("PreviewAdam",),
    attrs={"norm_coefficient": 0.0, "norm_coefficient_post": 0.0, "alpha": 0.9,
           "beta": 0.999, "epsilon": 1e-6},
    kernel="onnx_adam", domains=(None, None, None, "nonneg", "count", "positive"),
    doc="ONNX Adam: bias correction r·√(1 − beta^t)/(1 − alpha^t) for t > 0, epsilon "
        "outside the square root, post-update decay (1 − norm_coefficient_post)",
))
