"""Losses with torch.nn's default reduction, and their gradients.

``mse`` is ``torch.nn.MSELoss()`` (mean over all elements); ``softmax_cross_entropy`` is
``torch.nn.CrossEntropyLoss()`` on int64 class indices (mean over the batch), computed
through a stable log-softmax.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import OpDef, expect, fmt_shape, register, same_dtype, same_shape, scalar


def _mean(x: np.ndarray) -> np.ndarray:
    """The mean of all of ``x``; of nothing, NaN (0 / 0, as torch) without a warning."""
    with np.errstate(invalid="ignore"):
        return np.sum(x) / x.size if x.size else np.sum(x) * np.nan


# ------------------------------------------------------------------------------ mse
def _mse_infer(pred, target):
    expect(pred)
    same_shape(pred, target)
    return [(same_dtype(pred, target), ())]


def _mse_grad_infer(dloss, pred, target):
    scalar(dloss, (pred.dtype,), "loss gradient")
    return [(same_dtype(pred, target), same_shape(pred, target))]


def _mse_body(f):
    pred, target = f.inputs
    diff = f.node("Sub", [pred, target], ["diff"])
    # sum / count rather than ReduceMean: onnxruntime's ReduceMean of nothing is 0, where
    # the mean of an empty batch is NaN (0 / 0) as in torch and on the other targets
    total = f.node("ReduceSum", [f.node("Mul", [diff, diff], ["sq"])], ["total"], keepdims=0)
    numel = f.node("CastLike", [f.node("Size", [pred], ["size"]), pred], ["numel"])
    f.node("Div", [total, numel], f.outputs)


def _mse_grad_body(f):
    dloss, pred, target = f.inputs   # dloss · 2 (pred − target) / numel
    numel = f.node("CastLike", [f.node("Size", [pred], ["size"]), pred], ["numel"])
    two = f.node("CastLike", [f.const(np.array(2, np.float32), "two"), pred], ["two_like"])
    scale = f.node("Div", [f.node("Mul", [dloss, two], ["twice"]), numel], ["scale"])
    f.node("Mul", [f.node("Sub", [pred, target], ["diff"]), scale], f.outputs)


mse_grad = register(OpDef(
    "mse_grad", ("dloss", "pred", "target"), _mse_grad_infer,
    lambda dloss, pred, target: (dloss * 2 / pred.size * (pred - target)).astype(pred.dtype),
    onnx=lambda b, ins, outs: b.call("MSELossGrad", ins, outs, _mse_grad_body),
    onnx_functions=("MSELossGrad",),
    kernel="mse_grad", doc="dloss · 2 (pred − target) / numel",
))

mse = register(OpDef(
    "mse", ("pred", "target"), _mse_infer,
    lambda pred, target: np.asarray(_mean((pred - target) ** 2), pred.dtype),
    grad=(lambda g, dy, pred, target, **_: g.apply("mse_grad", [dy, pred, target]),
          lambda g, dy, pred, target, **_: g.mul(g.apply("mse_grad", [dy, pred, target]),
                                                 g.const(np.array(-1, pred.dtype)))),
    onnx=lambda b, ins, outs: b.call("MSELoss", ins, outs, _mse_body),
    onnx_functions=("MSELoss",),
    kernel="mse", doc="mean((pred − target)²) over all elements",
))


# -------------------------------------------------------------- softmax cross-entropy
def _sce_check(logits, labels):
    expect(logits, rank=2)
    expect(labels, rank=1, dtypes=("int64",), what="labels")
    if not same_shape_0(logits, labels):
        raise ShapeError(f"labels '{labels.name}' {fmt_shape(labels.shape)} must be "
                         f"[{logits.shape[0]}] to match logits '{logits.name}'")


def same_shape_0(a, b):
    x, y = a.shape[0], b.shape[0]
    return x == y or isinstance(x, str) or isinstance(y, str)


def _sce_infer(logits, labels):
    _sce_check(logits, labels)
    return [(logits.dtype, ())]


def _sce_grad_infer(dloss, logits, labels):
    _sce_check(logits, labels)
    scalar(dloss, (logits.dtype,), "loss gradient")
    return [(logits.dtype, logits.shape)]


def log_softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _sce_ref(logits, labels):
    logp = log_softmax(logits)
    return np.asarray(-_mean(logp[np.arange(len(labels)), labels]), logits.dtype)


def _sce_grad_ref(dloss, logits, labels):
    # softmax · s, then s taken off at the label (s = dloss / N): torch's order, which gives
    # NaN at the label for an infinite dloss, where (softmax − onehot) · s would give −Inf.
    scale = dloss / len(labels)
    g = np.exp(log_softmax(logits)) * scale
    g[np.arange(len(labels)), labels] -= scale
    return g.astype(logits.dtype)


def _sce_grad_body(f):
    dloss, logits, labels = f.inputs   # softmax(logits) · s − onehot(labels) · s, s = dloss / N
    shape = f.node("Shape", [logits], ["shape"])   # N and C as scalars, as OneHot wants depth
    batch = f.node("Gather", [shape, f.const(np.array(0, np.int64), "n_axis")], ["batch"], axis=0)
    n = f.node("CastLike", [batch, logits], ["n"])
    scale = f.node("Div", [dloss, n], ["scale"])
    probs = f.node("Mul", [f.node("Softmax", [logits], ["softmax"], axis=1), scale], ["probs"])
    depth = f.node("Gather", [shape, f.const(np.array(1, np.int64), "c_axis")], ["classes"],
                   axis=0)
    # the label's column by Where, not by multiplying a one-hot (0 · Inf would be NaN)
    values = f.const(np.array([0, 1], np.float32), "off_on")
    onehot = f.node("OneHot", [labels, depth, values], ["onehot"], axis=-1)
    at = f.node("Greater", [onehot, f.const(np.array(0.5, np.float32), "half")], ["at_label"])
    f.node("Where", [at, f.node("Sub", [probs, scale], ["minus_scale"]), probs], f.outputs)


sce_grad = register(OpDef(
    "softmax_cross_entropy_grad", ("dloss", "logits", "labels"), _sce_grad_infer, _sce_grad_ref,
    onnx=lambda b, ins, outs: b.call("SoftmaxCrossEntropyGrad", ins, outs, _sce_grad_body),
    onnx_functions=("SoftmaxCrossEntropyGrad",),
    kernel="softmax_cross_entropy_grad", domains=(None, None, "label"),
    doc="dloss · (softmax(logits) − onehot(labels)) / N",
))

def _sce_body(f):
    logits, labels = f.inputs   # −mean_n log_softmax(logits)[n, labels[n]]
    logp = f.node("LogSoftmax", [logits], ["logp"], axis=1)
    column = f.node("Unsqueeze", [labels, f.const(np.array([1], np.int64), "axis1")],
                    ["column"])
    picked = f.node("GatherElements", [logp, column], ["picked"], axis=1)
    f.node("Neg", [f.node("ReduceMean", [picked], ["mean"], keepdims=0)], f.outputs)


def _sce_onnx(b, ins, outs):
    if b.portable:   # for runtimes without SoftmaxCrossEntropyLoss (OpenVINO, tract, ...)
        b.call("SoftmaxCrossEntropy", ins, outs, _sce_body)
    else:
        b.node("SoftmaxCrossEntropyLoss", ins, outs, reduction="mean")


sce = register(OpDef(
    "softmax_cross_entropy", ("logits", "labels"), _sce_infer, _sce_ref,
    grad=(lambda g, dy, logits, labels, **_: g.apply(sce_grad.name, [dy, logits, labels]),
          None),
    onnx=_sce_onnx,
    kernel="softmax_cross_entropy", domains=(None, "label"),
    doc="−mean_n log_softmax(logits)[n, labels[n]]",
))
