"""Linear and the matrix product its gradients are built from.

Linear: ``out[n, o] = bias[o] + Σ_k weight[o, k] · input[n, k]``, weight ``[C_out, C_in]``.
Its gradient rule is the chain-rule table of DESIGN §1, one line per input.
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import OpDef, dims_match, expect, fmt_shape, register, same_dtype


def _linear_infer(x, w, b=None):
    expect(x, rank=2)
    expect(w, rank=2, what="weight")
    if not dims_match(x.shape[1], w.shape[1]):
        raise ShapeError(
            f"input '{x.name}' {fmt_shape(x.shape)} has {x.shape[1]} features but weight "
            f"'{w.name}' {fmt_shape(w.shape)} expects {w.shape[1]} (weight is [C_out, C_in])"
        )
    if b is not None:
        expect(b, rank=1, what="bias")
        if not dims_match(b.shape[0], w.shape[0]):
            raise ShapeError(f"bias '{b.name}' {fmt_shape(b.shape)} must be [{w.shape[0]}]")
    return [(same_dtype(*[v for v in (x, w, b) if v is not None]), (x.shape[0], w.shape[0]))]


def _linear_ref(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def _linear_onnx(b, ins, outs):
    b.node("Gemm", [i for i in ins if i], outs, transB=1)


linear = register(OpDef(
    "linear", ("input", "weight", "bias?"), _linear_infer, _linear_ref,
    grad=(
        lambda g, dy, x, w, b=None, **_: g.matmul(dy, w),                # dInput  = dOut · W
        lambda g, dy, x, w, b=None, **_: g.matmul(dy, x, trans_a=True),  # dWeight = dOutᵀ · Input
        lambda g, dy, x, w, b=None, **_: g.reduce_sum(dy, axes=[0]),     # dBias   = Σ_n dOut
    ),
    onnx=_linear_onnx, kernel="linear",
    doc="out = input · weightᵀ + bias",
))


def _matmul_infer(a, b, *, trans_a, trans_b):
    expect(a, rank=2)
    expect(b, rank=2)
    m, ka = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if not dims_match(ka, kb):
        raise ShapeError(
            f"inner dims differ: '{a.name}'{'ᵀ' if trans_a else ''} {fmt_shape(a.shape)} "
            f"times '{b.name}'{'ᵀ' if trans_b else ''} {fmt_shape(b.shape)}"
        )
    return [(same_dtype(a, b), (m, n))]


def _matmul_ref(a, b, *, trans_a, trans_b):
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def _matmul_grad_a(g, dy, a, b, *, trans_a, trans_b, **_):
    # C = op(A)·op(B): d op(A) = dC·op(B)ᵀ, then undo op on A.
    if trans_a:
        return g.matmul(b, dy, trans_a=trans_b, trans_b=True)
    return g.matmul(dy, b, trans_b=not trans_b)


def _matmul_grad_b(g, dy, a, b, *, trans_a, trans_b, **_):
    if trans_b:
        return g.matmul(dy, a, trans_a=True, trans_b=trans_a)
    return g.matmul(a, dy, trans_a=not trans_a)


matmul = register(OpDef(
    "matmul", ("a", "b"), _matmul_infer, _matmul_ref,
    grad=(_matmul_grad_a, _matmul_grad_b),
    onnx=lambda b, ins, outs, trans_a, trans_b: b.node(
        "Gemm", ins, outs, transA=int(trans_a), transB=int(trans_b)),
    attrs={"trans_a": False, "trans_b": False}, kernel="matmul",
    doc="out = op(a) · op(b), op transposes when its flag is set",
))
