"""The ONNX import table: one small function per ONNX op type, returning IR values.

Each function reads one ONNX node through the :class:`~.onnx_import.Importer` and emits
IR nodes; ``None`` means the node was folded (a constant) or bound by the function itself
(a fused ``MatMul`` + ``Add``). Everything not listed in :data:`SUPPORTED` raises
:class:`UnsupportedOpError`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..backends.onnx_builder import DOMAIN
from ..errors import ShapeError
from ..ir import Value
from ..ops import OPS
from .onnx_import import Const, Importer

#: What an import function returns: the node's output value(s), or None (see above).
Result = Value | tuple[Value, ...] | None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rank(imp: Importer, name: str) -> int:
    c = imp.const(name)
    return c.data.ndim if c is not None else len(imp.value(name).shape)


# ------------------------------------------------------------------ linear and products
def _torch_name(imp: Importer, name: str) -> str:
    """torch's name for a pre-transposed weight ``onnx::MatMul_8`` of ``/fc1/MatMul``."""
    scope = imp.scope()
    guess = f"{scope}.weight" if scope else None
    if name.startswith("onnx::") and guess and guess not in imp.reserved | set(imp.g.values):
        return guess
    return name


def _weight(imp: Importer, b: str, stored_in_out: bool):
    """``b`` as a linear weight ``[C_out, C_in]``, or None where it is not one.

    ``stored_in_out``: ``b`` multiplies from the right as ``[C_in, C_out]`` (MatMul, Gemm
    without transB); only a constant used by this node alone is transposed back.
    """
    c = imp.const(b)
    if _rank(imp, b) != 2:   # not a weight: the matmul it becomes names the bad rank
        return None
    if not stored_in_out:
        return imp.linear_param(b) if imp.is_input(b) else None
    if c is None or c.data.ndim != 2 or not imp.fresh_use(b) or imp.native:
        return None
    if c.origin and imp.fresh_use(c.origin):  # Transpose(W) of a named weight: W itself
        return imp.linear_param(c.origin)
    return imp.linear_param(_torch_name(imp, b), c.data.T)


def _bias(imp: Importer, c: str, n_out):
    """``c`` as a linear bias ``[C_out]`` (a constant ``[1, C_out]`` is reshaped), or None."""
    k = imp.const(c)
    if k is not None and k.data.shape == (1, n_out) and imp.fresh_use(c):
        return imp.linear_param(c, k.data.reshape(n_out))
    shape = k.data.shape if k is not None else imp.value(c).shape
    return imp.linear_param(c) if tuple(shape) == (n_out,) else None


def _linear(imp: Importer, x, w):
    """``linear(x, w)``, taking in the bias of a following ``Add`` of a constant bias."""
    out = imp.node.output[0]
    users = imp.consumers.get(out, [])
    if imp.uses[out] == 1 and len(users) == 1 and users[0].op_type == "Add" \
            and users[0].domain in ("", "ai.onnx"):
        add = users[0]
        other = add.input[1] if add.input[0] == out else add.input[0]
        bias = _bias(imp, other, w.shape[0]) if other in imp.consts else None
        if bias is not None:
            imp.done.add(id(add))
            imp.bind(add, imp.emit("linear", [x, w, bias]))
            return None
    return imp.emit("linear", [x, w])


def gemm(imp: Importer, node: onnx.NodeProto) -> Result:
    """``alpha · op(A) · op(B) + beta · C``: linear where it is one, matmul/mul/add else."""
    a, b, c = node.input[0], node.input[1], (node.input[2:] or [""])[0]
    at = _attrs(node)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    ta, tb = bool(at.get("transA", 0)), bool(at.get("transB", 0))
    x = imp.value(a)
    w = None if ta else _weight(imp, b, stored_in_out=not tb)
    if w is None:
        y = imp.emit("matmul", [x, imp.value(b)], trans_a=ta, trans_b=tb)
    elif not c and alpha == 1:
        return _linear(imp, x, w)
    else:
        bias = _bias(imp, c, w.shape[0]) if c and alpha == 1 and beta == 1 else None
        y = imp.emit("linear", [x, w] + ([bias] if bias is not None else []))
        c = "" if bias is not None else c
    if alpha != 1:
        y = imp.emit("mul", [y, imp.scalar(alpha, y, "alpha")])
    if c and beta != 0:
        cv = imp.value(c)
        if beta != 1:
            cv = imp.emit("mul", [cv, imp.scalar(beta, cv, "beta")])
        y = imp.emit("add", [y, cv])
    return y


def matmul(imp: Importer, node: onnx.NodeProto) -> Result:
    a, b = node.input
    ranks = (_rank(imp, a), _rank(imp, b))
    if ranks != (2, 2):
        raise imp.unsupported(f"only 2-D MatMul is imported (inputs of rank {ranks})")
    x = imp.value(a)
    w = _weight(imp, b, stored_in_out=True)
    return imp.emit("matmul", [x, imp.value(b)]) if w is None else _linear(imp, x, w)


def transpose(imp: Importer, node: onnx.NodeProto) -> Result:
    """Folded at import time: only a Transpose of a constant (a weight) is imported."""
    c = imp.const(node.input[0])
    if c is None:
        raise imp.unsupported("only a Transpose of a constant (a weight) is imported")
    perm = _attrs(node).get("perm")
    if perm is not None and sorted(perm) != list(range(c.data.ndim)):
        raise ShapeError(f"Transpose node '{node.name or node.output[0]}': perm {list(perm)} "
                         f"is not an order of the {c.data.ndim} axes of '{node.input[0]}'")
    data = np.transpose(c.data, perm)
    imp.consts[node.output[0]] = Const(node.output[0], data,
                                       origin=node.input[0] if data.ndim == 2 else None)
    return None


# ------------------------------------------------------------------ elementwise
def _unary(op: str):
    return lambda imp, node: imp.emit(op, [imp.value(node.input[0])])


def _binary(op: str):
    return lambda imp, node: imp.emit(op, [imp.value(i) for i in node.input])


def sub(imp: Importer, node: onnx.NodeProto) -> Result:
    """``a − b`` as ``a + (−1)·b`` (exact in floating point)."""
    a, b = (imp.value(i) for i in node.input)
    return imp.emit("add", [a, imp.emit("mul", [b, imp.scalar(-1, b, "minus_one")])])


# ------------------------------------------------------------------ shapes and reductions
def flatten(imp: Importer, node: onnx.NodeProto) -> Result:
    x = imp.value(node.input[0])
    axis = _attrs(node).get("axis", 1)
    return imp.emit("flatten", [x], axis=axis + len(x.shape) if axis < 0 else axis)


def _ints(imp: Importer, name: str, what: str) -> list[int]:
    """The constant ``name`` (a Reshape's shape, a ReduceSum's axes) as Python ints."""
    c = imp.const(name)
    if c is None:
        raise imp.unsupported(f"{what} must be a constant (initializer or Constant)")
    if c.data.dtype.kind not in "iu":
        node = imp.node.name or imp.node.op_type
        raise ShapeError(f"ONNX node '{node}' ({imp.node.op_type}): {what} '{name}' holds "
                         f"{c.data.dtype}, expected int64")
    return [int(d) for d in c.data.reshape(-1)]


def reshape(imp: Importer, node: onnx.NodeProto) -> Result:
    shape = _ints(imp, node.input[1], "the target shape")
    if _attrs(node).get("allowzero", 0) and 0 in shape:
        raise imp.unsupported("allowzero=1 with a 0 in the target shape")
    return imp.emit("reshape", [imp.value(node.input[0])], shape=shape)


def reduce_sum(imp: Importer, node: onnx.NodeProto) -> Result:
    at = _attrs(node)
    axes = at.get("axes")  # an attribute before opset 13, an input since
    if len(node.input) > 1 and node.input[1]:
        axes = _ints(imp, node.input[1], "the axes")
    x = imp.value(node.input[0])
    if not axes and at.get("noop_with_empty_axes", 0):
        return imp.emit("identity", [x])
    return imp.emit("reduce_sum", [x], axes=list(axes) if axes else None,
                    keepdims=bool(at.get("keepdims", 1)))


def softmax_cross_entropy(imp: Importer, node: onnx.NodeProto) -> Result:
    """torch.nn.CrossEntropyLoss's case only: 2-D logits, int64 labels, mean, no extras."""
    at = _attrs(node)
    reduction = at.get("reduction", b"mean").decode(errors="replace")
    why = (f"reduction '{reduction}' (only 'mean')" if reduction != "mean" else
           "ignore_index" if "ignore_index" in at else
           "class weights" if node.input[2:] and node.input[2] else
           "the log_prob output" if node.output[1:] and node.output[1] else "")
    logits, labels = imp.value(node.input[0]), imp.value(node.input[1])
    if not why and (len(logits.shape) != 2 or labels.dtype != "int64"):
        why = f"logits {logits!r} and labels {labels!r} (only [N, C] and int64 [N])"
    if why:
        raise imp.unsupported(why)
    return imp.emit("softmax_cross_entropy", [logits, labels])


# ------------------------------------------------------------------ lincompile functions
#: lincompile's model-local functions (``backends/onnx_builder``) → their IR op, as each
#: op declares them (``OpDef.onnx_functions``).
FUNCTIONS = {f: op.name for op in OPS.values() for f in op.onnx_functions}


def _float(f: float) -> float:
    """The shortest decimal that rounds to the same float32: 0.9, not 0.89999997."""
    return float(str(np.float32(f)))


def function_call(imp: Importer, node: onnx.NodeProto) -> Result:
    """A call of a ``lincompile.*`` local function: its IR op, float attributes as given."""
    if any(a.type != onnx.AttributeProto.FLOAT for a in node.attribute):
        raise imp.unsupported("lincompile's functions take float attributes only")
    attrs = {a.name: _float(a.f) for a in node.attribute}
    return imp.emit(FUNCTIONS[node.op_type], [imp.value(i) for i in node.input],
                    n_out=len(node.output), **attrs)


IMPORTERS = {
    "Add": _binary("add"), "Flatten": flatten, "Gemm": gemm, "Identity": _unary("identity"),
    "MatMul": matmul, "Mul": _binary("mul"), "ReduceSum": reduce_sum, "Relu": _unary("relu"),
    "Reshape": reshape, "Sigmoid": _unary("sigmoid"),
    "SoftmaxCrossEntropyLoss": softmax_cross_entropy, "Sub": sub, "Tanh": _unary("tanh"),
    "Transpose": transpose,
}
#: What the importer reads, for error messages and docs.
SUPPORTED = sorted([*IMPORTERS, "Constant"]) + [f"{DOMAIN}.{f}" for f in FUNCTIONS]


def import_node(imp: Importer, node: onnx.NodeProto) -> Result:
    """Import one ONNX node, or raise UnsupportedOpError naming it."""
    if node.domain in ("", "ai.onnx") and node.op_type in IMPORTERS:
        return IMPORTERS[node.op_type](imp, node)
    if node.domain == DOMAIN and node.op_type in FUNCTIONS \
            and (DOMAIN, node.op_type) in imp.functions:
        return function_call(imp, node)
    raise imp.unsupported()
