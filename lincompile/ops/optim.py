"""Optimizer updates with torch.optim semantics (one node per parameter).

``sgd``: torch.optim.SGD (dampening 0, no Nesterov); the velocity starts at zero, which
gives torch's first step ``buf = grad`` exactly. ``adam``/``adamw``: torch.optim.Adam and
AdamW, with bias correction; ``step`` counts the updates already made. ``adagrad``:
torch.optim.Adagrad, which is also ONNX's ``ai.onnx.preview.training`` Adagrad (T = step,
decay_factor = lr_decay, norm_coefficient = weight_decay, epsilon = eps).

Special values follow torch too: a zero weight decay adds nothing (not ``0 · p``, which is
NaN for an infinite parameter), and Adam's first moment is torch's ``m.lerp_(grad, 1 − β1)``
(:func:`lerp`), whose NaN/Inf results differ from ``β1·m + (1 − β1)·grad`` when m is infinite.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import FLOATS, OpDef, expect, register, same_shape, scalar


def _sgd_infer(p, grad, *rest, momentum, weight_decay):
    *state, lr = rest
    expect(p, what="parameter")
    for s in (grad, *state):
        same_shape(p, s)
    scalar(lr, FLOATS, "learning rate")
    if bool(state) != bool(momentum):
        raise ShapeError(f"sgd on '{p.name}': a velocity input is needed exactly when momentum "
                         f"is nonzero (momentum={momentum}, {len(state)} velocity inputs)")
    return [(p.dtype, p.shape)] * (1 + len(state))


def _sgd_ref(p, grad, *rest, momentum, weight_decay):
    *state, lr = rest
    g = grad + weight_decay * p if weight_decay else grad
    if not momentum:
        return (p - lr * g).astype(p.dtype)
    v = momentum * state[0] + g
    return (p - lr * v).astype(p.dtype), v.astype(p.dtype)


def lerp(a, b, w: float):
    """torch.lerp with a scalar weight: ``a + w·(b − a)`` for ``|w| < 0.5``, else
    ``b − (b − a)·(1 − w)`` (the same up to rounding, not for infinite ``a``)."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1 - w)


def _sgd_body(f, decay: bool):
    p, grad, *state, lr = f.inputs
    g = grad
    if decay:   # only then: 0·p is NaN where p is ±Inf, and torch skips the term at wd = 0
        g = f.node("Add", [grad, f.node("Mul", [f.attr("weight_decay", p), p], ["decay"])],
                   ["g"])
    if state:
        v = f.node("Add", [f.node("Mul", [f.attr("momentum", p), state[0]], ["mv"]), g],
                   [f.outputs[1]])
        g = f.node("Identity", [v], ["update"])
    f.node("Sub", [p, f.node("Mul", [lr, g], ["step"])], [f.outputs[0]])


def _sgd_onnx(b, ins, outs, *, momentum, weight_decay):
    fn = ("SGDMomentum" if momentum else "SGD") + ("Decay" if weight_decay else "")
    attrs = {"momentum": momentum} if momentum else {}
    if weight_decay:
        attrs["weight_decay"] = weight_decay
    b.call(fn, ins, outs, lambda f: _sgd_body(f, bool(weight_decay)), **attrs)


sgd = register(OpDef(
    "sgd", ("param", "grad", "velocity?", "lr"), _sgd_infer, _sgd_ref, onnx=_sgd_onnx,
    onnx_functions=("SGD", "SGDMomentum", "SGDDecay", "SGDMomentumDecay"),
    attrs={"momentum": 0.0, "weight_decay": 0.0},
    kernel="sgd",
    domains=(None, None, None, "positive"),
    doc="g = grad + wd·p; v = momentum·v + g; p −= lr·v",
))


def _adam_infer(p, grad, m, v, step, lr, **_):
    expect(p, what="parameter")
    for s in (grad, m, v):
        same_shape(p, s)
    scalar(step, ("int64",), "step")
    scalar(lr, FLOATS, "learning rate")
    return [(p.dtype, p.shape)] * 3


def _adam_ref(p, grad, m, v, step, lr, *, beta1, beta2, eps, weight_decay, decoupled):
    if decoupled:
        p = p * (1 - lr * weight_decay)
    elif weight_decay:
        grad = grad + weight_decay * p
    t = float(step) + 1
    m = lerp(m, grad, 1 - beta1)
    v = beta2 * v + (1 - beta2) * grad * grad
    denom = np.sqrt(v) / np.sqrt(1 - beta2**t) + eps
    p = p - (lr / (1 - beta1**t)) * (m / denom)
    return tuple(a.astype(grad.dtype) for a in (p, m, v))


def _adam_body(f, decoupled: bool, decay: bool):
    p, grad, m, v, step, lr = f.inputs
    one = f.node("CastLike", [f.const(np.array(1, np.float32), "one"), p], ["one_like"])
    b1, b2, eps = (f.attr(a, p) for a in ("beta1", "beta2", "eps"))
    wd = f.attr("weight_decay", p) if decay else None
    if decoupled:  # AdamW: p ← p · (1 − lr·wd), then Adam without L2
        p = f.node("Mul", [p, f.node("Sub", [one, f.node("Mul", [lr, wd], ["lr_wd"])],
                                     ["shrink"])], ["p_decayed"])
    elif decay:   # Adam: L2 penalty added to the gradient (skipped at wd = 0, as torch)
        grad = f.node("Add", [grad, f.node("Mul", [wd, p], ["decay"])], ["g"])
    # m.lerp(grad, w), w = 1 − b1: m + w·(grad − m) when w < 0.5, else grad − (grad − m)·b1
    w = f.attr("one_minus_beta1", p)
    d = f.node("Sub", [grad, m], ["g-m"])
    half = f.node("CastLike", [f.const(np.array(0.5, np.float32), "half"), p], ["half_like"])
    m2 = f.node("Where", [f.node("Less", [w, half], ["small_w"]),
                          f.node("Add", [m, f.node("Mul", [w, d], ["w_d"])], ["m_small"]),
                          f.node("Sub", [grad, f.node("Mul", [d, b1], ["d_b1"])], ["m_large"])],
                [f.outputs[1]])
    gg = f.node("Mul", [grad, grad], ["gg"])
    v2 = f.node("Add", [f.node("Mul", [b2, v], ["b2v"]),
                        f.node("Mul", [f.attr("one_minus_beta2", p), gg], ["gv"])],
                [f.outputs[2]])
    # bias corrections 1 − β^t in float64 from the exact complements: float32 β2 = 0.999
    # alone is off by 1.3e-5 relative in 1 − β2
    one_d = f.const(np.array(1, np.float64), "one_d")
    t = f.node("CastLike", [f.node("Add", [step, f.const(np.array(1, np.int64), "one_i")],
                                   ["step1"]), one_d], ["t"])
    bc1, bc2 = (f.node("CastLike", [f.node("Sub", [one_d, f.node("Pow", [f.node(
        "Sub", [one_d, f.attr(f"one_minus_beta{i}", one_d)], [f"beta{i}_d"]), t],
        [f"beta{i}_t"])], [f"bc{i}_d"]), p], [f"bc{i}"]) for i in (1, 2))
    denom = f.node("Add", [f.node("Div", [f.node("Sqrt", [v2], ["sqrt_v"]),
                                          f.node("Sqrt", [bc2], ["sqrt_bc2"])], ["v_hat"]), eps],
                   ["denom"])
    step_size = f.node("Div", [lr, bc1], ["step_size"])
    upd = f.node("Mul", [step_size, f.node("Div", [m2, denom], ["ratio"])], ["update"])
    f.node("Sub", [p, upd], [f.outputs[0]])


#: 1 − β exactly, which a float32 β cannot give: written beside β, checked against it on import
ADAM_DERIVED = {"one_minus_beta1": lambda a: 1 - a["beta1"],
                "one_minus_beta2": lambda a: 1 - a["beta2"]}


def _adam_onnx(b, ins, outs, fn, decoupled, *, weight_decay, **attrs):
    """AdamW always decays (p · (1 − lr·wd) keeps ±Inf); Adam's L2 term only when wd ≠ 0."""
    decay = decoupled or bool(weight_decay)
    if decay:
        attrs["weight_decay"] = weight_decay
    b.call(fn if decoupled or not decay else f"{fn}Decay", ins, outs,
           lambda f: _adam_body(f, decoupled, decay), **attrs,
           **{k: derive(attrs) for k, derive in ADAM_DERIVED.items()})


def _adam_op(name, fn, decoupled, wd):
    return register(OpDef(
        name, ("param", "grad", "m", "v", "step", "lr"), _adam_infer,
        lambda *a, **k: _adam_ref(*a, **k, decoupled=decoupled),
        onnx=lambda b, ins, outs, **attrs: _adam_onnx(b, ins, outs, fn, decoupled, **attrs),
        onnx_functions=(fn,) if decoupled else (fn, f"{fn}Decay"),
        onnx_derived=ADAM_DERIVED,
        attrs={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": wd}, kernel="adam",
        domains=(None, None, None, "nonneg", "count", "positive"),
        doc=f"torch.optim.{fn} update",
    ))


adam = _adam_op("adam", "Adam", False, 0.0)
adamw = _adam_op("adamw", "AdamW", True, 0.01)


# -------------------------------------------------------------------------- adagrad
def _adagrad_infer(p, grad, acc, step, lr, **_):
    expect(p, what="parameter")
    for s in (grad, acc):
        same_shape(p, s)
    scalar(step, ("int64",), "step")
    scalar(lr, FLOATS, "learning rate")
    return [(p.dtype, p.shape)] * 2


def _adagrad_ref(p, grad, acc, step, lr, *, lr_decay, weight_decay, eps):
    r = lr / (1 + step * lr_decay)
    g = grad + weight_decay * p if weight_decay else grad
    acc = acc + g * g
    return (p - r * g / (np.sqrt(acc) + eps)).astype(p.dtype), acc.astype(p.dtype)


def _adagrad_body(f, l2):
    p, grad, acc, step, lr = f.inputs
    one = f.node("CastLike", [f.const(np.array(1, np.float32), "one"), lr], ["one_like"])
    if l2:
        grad = f.node("Add", [grad, f.node("Mul", [f.attr("weight_decay", p), p], ["decay"])],
                      ["g"])
    acc2 = f.node("Add", [acc, f.node("Mul", [grad, grad], ["gg"])], [f.outputs[1]])
    decay = f.node("Mul", [f.node("CastLike", [step, lr], ["t"]), f.attr("lr_decay", lr)],
                   ["t_decay"])
    r = f.node("CastLike", [f.node("Div", [lr, f.node("Add", [one, decay], ["1+t_decay"])],
                                   ["r"]), p], ["r_like"])
    std = f.node("Add", [f.node("Sqrt", [acc2], ["sqrt_acc"]), f.attr("eps", p)], ["std"])
    f.node("Sub", [p, f.node("Div", [f.node("Mul", [r, grad], ["rg"]), std], ["update"])],
           [f.outputs[0]])


def _adagrad_onnx(b, ins, outs, *, lr_decay, weight_decay, eps):
    if weight_decay:
        b.call("AdagradL2", ins, outs, lambda f: _adagrad_body(f, True), lr_decay=lr_decay,
               weight_decay=weight_decay, eps=eps)
    else:
        b.call("Adagrad", ins, outs, lambda f: _adagrad_body(f, False), lr_decay=lr_decay,
               eps=eps)


adagrad = register(OpDef(
    "adagrad", ("param", "grad", "sum", "step", "lr"), _adagrad_infer, _adagrad_ref,
    onnx=_adagrad_onnx, onnx_functions=("Adagrad", "AdagradL2"),
    attrs={"lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10}, kernel="adagrad",
    domains=(None, None, "nonneg", "count", "positive"),
    doc="torch.optim.Adagrad = ONNX Adagrad: r = lr / (1 + step·lr_decay); g = grad + wd·p; "
        "sum += g²; p −= r·g / (√sum + eps)",
))
