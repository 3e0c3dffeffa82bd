"""Linear and the matrix product its gradients are built from.

Linear: ``out[n, o] = bias[o] + Σ_k weight[o, k] · input[n, k]``, weight ``[C_out, C_in]``.
Its gradient rule is the chain-rule table of docs/derivation.md, one line per input.

Both take leading dims as torch does: an input ``[*, C_in]`` is the matrix of its rows
(the leading dims flattened, a view), so Linear maps ``[*, C_in] → [*, C_out]`` and the
weight gradient ``dOutᵀ · Input`` sums over every leading dim.
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import OpDef, dims_match, expect, fmt_shape, register, same_dtype


def _rank2(v, what="input"):
    expect(v, what=what)
    if len(v.shape) < 2:
        raise ShapeError(f"{what} '{v.name}' has shape {fmt_shape(v.shape)}, expected rank 2 "
                         "or more ([*, features])")


def _linear_infer(x, w, b=None):
    _rank2(x)
    expect(w, rank=2, what="weight")
    if not dims_match(x.shape[-1], w.shape[1]):
        raise ShapeError(
            f"input '{x.name}' {fmt_shape(x.shape)} has {x.shape[-1]} features but weight "
            f"'{w.name}' {fmt_shape(w.shape)} expects {w.shape[1]} (weight is [C_out, C_in])"
        )
    if b is not None:
        expect(b, rank=1, what="bias")
        if not dims_match(b.shape[0], w.shape[0]):
            raise ShapeError(f"bias '{b.name}' {fmt_shape(b.shape)} must be [{w.shape[0]}]")
    return [(same_dtype(*[v for v in (x, w, b) if v is not None]), (*x.shape[:-1], w.shape[0]))]


def _linear_ref(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def _linear_nd_body(f):
    x, w, *bias = f.inputs   # x · Wᵀ (+ b), x of any rank (ONNX Gemm is 2-D only)
    y = f.node("MatMul", [x, f.node("Transpose", [w], ["wt"], perm=[1, 0])],
               f.outputs if not bias else ["xw"])
    if bias:
        f.node("Add", [y, bias[0]], f.outputs)


def _linear_onnx(b, ins, outs):
    if len(b.shape_of(ins[0])) == 2:
        b.node("Gemm", [i for i in ins if i], outs, transB=1)
    else:
        b.call("Linear" if len(ins) == 3 else "LinearNoBias", ins, outs, _linear_nd_body)


def _leading(v):
    return list(range(len(v.shape) - 1))


linear = register(OpDef(
    "linear", ("input", "weight", "bias?"), _linear_infer, _linear_ref,
    grad=(
        lambda g, dy, x, w, b=None, **_: g.matmul(dy, w),                # dInput  = dOut · W
        lambda g, dy, x, w, b=None, **_: g.matmul(dy, x, trans_a=True),  # dWeight = dOutᵀ · Input
        lambda g, dy, x, w, b=None, **_: g.reduce_sum(dy, axes=_leading(dy)),  # dBias = Σ_n dOut
    ),
    onnx=_linear_onnx, onnx_functions=("Linear", "LinearNoBias"), kernel="linear",
    doc="out = input · weightᵀ + bias, input [*, C_in]",
))


def _matmul_infer(a, b, *, trans_a, trans_b):
    _rank2(a)
    _rank2(b)
    # with leading dims: a [*, K] · b [K, N], or aᵀ · b over the rows both share
    nd_ok = len(a.shape) == len(b.shape) and not trans_b if trans_a else len(b.shape) == 2
    if (len(a.shape) > 2 or len(b.shape) > 2) and not nd_ok:
        raise ShapeError(
            f"'{a.name}' {fmt_shape(a.shape)} times '{b.name}' {fmt_shape(b.shape)} "
            f"(trans_a={trans_a}, trans_b={trans_b}): with leading dims, either b is 2-D or "
            "aᵀ · b sums over the common leading dims of a and b"
        )
    if trans_a:   # over the rows of a and b: their leading dims must agree
        if not all(map(dims_match, a.shape[:-1], b.shape[:-1] if not trans_b else b.shape[1:])):
            raise ShapeError(f"inner dims differ: '{a.name}'ᵀ {fmt_shape(a.shape)} times "
                             f"'{b.name}'{'ᵀ' if trans_b else ''} {fmt_shape(b.shape)}")
        out = (a.shape[-1], b.shape[0] if trans_b else b.shape[-1])
    else:
        kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if not dims_match(a.shape[-1], kb):
            raise ShapeError(
                f"inner dims differ: '{a.name}' {fmt_shape(a.shape)} "
                f"times '{b.name}'{'ᵀ' if trans_b else ''} {fmt_shape(b.shape)}"
            )
        out = (*a.shape[:-1], n)
    return [(same_dtype(a, b), out)]


def _rows(v):
    """A tensor ``[*, C]`` as the matrix of its rows ``[prod(*), C]`` (a view)."""
    return v.reshape(-1, v.shape[-1])


def _matmul_ref(a, b, *, trans_a, trans_b):
    if trans_a:
        return _rows(a).T @ (b.T if trans_b else _rows(b))
    return a @ (b.T if trans_b else b)


def _matmul_nt_body(f):
    a, b = f.inputs
    f.node("MatMul", [a, f.node("Transpose", [b], ["bt"], perm=[1, 0])], f.outputs)


def _matmul_tn_body(f):
    a, b = f.inputs   # Σ over every leading dim: the rows of both, flattened
    rows = [f.node("Flatten", [v], [f"{v}_rows"], axis=-1) for v in (a, b)]
    f.node("Gemm", rows, f.outputs, transA=1)


def _matmul_onnx(b, ins, outs, trans_a, trans_b):
    if all(len(b.shape_of(i)) == 2 for i in ins):
        b.node("Gemm", ins, outs, transA=int(trans_a), transB=int(trans_b))
    elif trans_a:
        b.call("MatMulTN", ins, outs, _matmul_tn_body)
    elif trans_b:
        b.call("MatMulNT", ins, outs, _matmul_nt_body)
    else:
        b.node("MatMul", ins, outs)


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
    onnx=_matmul_onnx, onnx_functions=("MatMulTN", "MatMulNT"),
    function_attrs={"MatMulTN": {"trans_a": True}, "MatMulNT": {"trans_b": True}},
    attrs={"trans_a": False, "trans_b": False}, kernel="matmul",
    doc="out = op(a) · op(b), op transposes when its flag is set; a [*, K] is the matrix "
        "of its rows",
))
