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
from ..ir import Value
from ..ops import OPS
from .onnx_import import DTYPES, Const, Importer

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
    if not stored_in_out:
        return imp.linear_param(b) if imp.is_input(b) else None
    if c is None or c.data.ndim != 2 or not imp.fresh_use(b) or imp.native:
        return None
    if c.origin and imp.fresh_use(c.origin):  # Transpose(W) of a named weight: W itself
        return imp.linear_param(c.origin)
    return imp.linear_param(_torch_name(imp, b), c.data.T, source=b, transform="transpose")


def _bias(imp: Importer, c: str, n_out):
    """``c`` as a linear bias ``[C_out]`` (a constant ``[1, C_out]`` is reshaped), or None."""
    k = imp.const(c)
    if k is not None and k.data.shape == (1, n_out) and imp.fresh_use(c):
        return imp.linear_param(c, k.data.reshape(n_out), transform="reshape")
    shape = k.data.shape if k is not None else imp.value(c).shape
    return imp.linear_param(c) if tuple(shape) == (n_out,) else None


def _linear(imp: Importer, x, w):
    """``linear(x, w)``, taking in the bias of a following ``Add`` of a constant bias."""
    out, casts = imp.node.output[0], []
    while (add := _only_user(imp, out)) is not None and add.op_type == "Cast" \
            and _attrs(add).get("to") == _ONNX_FLOAT.get(x.dtype):  # Keras: MatMul, Cast, Add
        casts.append(add)
        out = add.output[0]
    if add is not None and add.op_type == "Add":
        other = add.input[1] if add.input[0] == out else add.input[0]
        bias = _bias(imp, other, w.shape[0]) if other in imp.consts else None
        if bias is not None:
            imp.done.update(id(n) for n in [*casts, add])
            imp.bind(add, imp.emit("linear", [x, w, bias]))
            return None
    return imp.emit("linear", [x, w])


_ONNX_FLOAT = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}


def _only_user(imp: Importer, name: str) -> onnx.NodeProto | None:
    """The one default-domain node reading ``name``, if it is read once (not an output)."""
    users = imp.consumers.get(name, [])
    if imp.uses[name] == 1 and len(users) == 1 and users[0].domain in ("", "ai.onnx"):
        return users[0]
    return None


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
    """``[*, K] · [K, N]`` (torch's Linear on any leading dims); batched products are not."""
    a, b = node.input
    ranks = (_rank(imp, a), _rank(imp, b))
    if ranks[0] < 2 or ranks[1] != 2:
        raise imp.unsupported(f"only a MatMul of [*, K] by a 2-D [K, N] is imported (inputs "
                              f"of rank {ranks})")
    x = imp.value(a)
    w = _weight(imp, b, stored_in_out=True)
    return imp.emit("matmul", [x, imp.value(b)]) if w is None else _linear(imp, x, w)


def transpose(imp: Importer, node: onnx.NodeProto) -> Result:
    """Folded at import time: only a Transpose of a constant (a weight) is imported."""
    c = imp.const(node.input[0])
    if c is None:
        raise imp.unsupported("only a Transpose of a constant (a weight) is imported")
    data = np.transpose(c.data, _attrs(node).get("perm"))
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


def reshape(imp: Importer, node: onnx.NodeProto) -> Result:
    c = imp.const(node.input[1])
    if c is None:
        raise imp.unsupported("the target shape must be a constant (initializer or Constant)")
    shape = [int(d) for d in c.data.reshape(-1)]
    if _attrs(node).get("allowzero", 0) and 0 in shape:
        raise imp.unsupported("allowzero=1 with a 0 in the target shape")
    x = imp.value(node.input[0])
    return imp.emit("reshape", [x], shape=imp.batch_reshape(x, shape))


def reduce_sum(imp: Importer, node: onnx.NodeProto) -> Result:
    at = _attrs(node)
    axes = at.get("axes")  # an attribute before opset 13, an input since
    if len(node.input) > 1 and node.input[1]:
        c = imp.const(node.input[1])
        if c is None:
            raise imp.unsupported("the axes must be a constant")
        axes = [int(a) for a in c.data.reshape(-1)]
    x = imp.value(node.input[0])
    if not axes and at.get("noop_with_empty_axes", 0):
        return imp.emit("identity", [x])
    return imp.emit("reduce_sum", [x], axes=list(axes) if axes else None,
                    keepdims=bool(at.get("keepdims", 1)))


def softmax_cross_entropy(imp: Importer, node: onnx.NodeProto) -> Result:
    """torch.nn.CrossEntropyLoss's case only: 2-D logits, int64 labels, mean, no extras."""
    at = _attrs(node)
    reduction = at.get("reduction", b"mean").decode()
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


# ------------------------------------------------------------------ MLP ops
def leaky_relu(imp: Importer, node: onnx.NodeProto) -> Result:
    alpha = _float(_attrs(node).get("alpha", 0.01))
    return imp.emit("leaky_relu", [imp.value(node.input[0])], alpha=alpha)


def gelu(imp: Importer, node: onnx.NodeProto) -> Result:
    """Gelu (opset 20): ``approximate`` "none" (erf) or "tanh"."""
    approximate = _attrs(node).get("approximate", b"none").decode()
    if approximate not in ("none", "tanh"):
        raise imp.unsupported(f"approximate='{approximate}' (only 'none' and 'tanh')")
    return imp.emit("gelu", [imp.value(node.input[0])], approximate=approximate)


def _last_axis(imp: Importer, x: Value, axis: int, what: str) -> None:
    """Refuse unless ``axis`` is the last axis of ``x``."""
    r = len(x.shape)
    if not r or not -r <= axis < r or axis % r != r - 1:
        raise imp.unsupported(f"{what} over axis {axis} of '{x.name}' {list(x.shape)}: only "
                              "the last axis (axis=-1) is imported")


def _softmax(op: str):
    def run(imp: Importer, node: onnx.NodeProto) -> Result:
        x = imp.value(node.input[0])
        # before opset 13 the default axis is 1 (the input is coerced to 2-D there, which
        # is the last-axis softmax exactly when the axis is the last one)
        default = 1 if imp.opsets.get("ai.onnx", 18) < 13 else -1
        _last_axis(imp, x, _attrs(node).get("axis", default), node.op_type)
        return imp.emit(op, [x])
    return run


def layer_normalization(imp: Importer, node: onnx.NodeProto) -> Result:
    """torch.nn.LayerNorm: the last axis, scale and bias as trainable parameters."""
    at = _attrs(node)
    x = imp.value(node.input[0])
    _last_axis(imp, x, at.get("axis", -1), "LayerNormalization")
    if any(o and imp.uses[o] for o in node.output[1:]):
        raise imp.unsupported("its Mean/InvStdDev outputs are used")
    affine = [imp.linear_param(i) if imp.is_input(i) else imp.value(i)
              for i in node.input[1:] if i]
    return imp.emit("layer_norm", [x, *affine], epsilon=_float(at.get("epsilon", 1e-5)))


def cast(imp: Importer, node: onnx.NodeProto) -> Result:
    """Same dtype: identity. A constant is cast at import time; else a new dtype is refused."""
    to = _attrs(node).get("to")
    dtype = DTYPES.get(to) or str(helper.tensor_dtype_to_np_dtype(to))
    c = imp.const(node.input[0])
    if c is not None and to in DTYPES:
        imp.consts[node.output[0]] = Const(node.output[0], c.data.astype(dtype))
        return None
    x = imp.value(node.input[0])
    if x.dtype != dtype:
        raise imp.unsupported(f"it casts '{x.name}' from {x.dtype} to {dtype}; only a Cast to "
                              "the same dtype (a no-op) is imported")
    return imp.emit("identity", [x])


def dropout(imp: Importer, node: onnx.NodeProto) -> Result:
    """Inference-form Dropout (no training_mode, or a constant false) is the identity."""
    train = node.input[2] if len(node.input) > 2 else ""
    c = imp.const(train) if train else None
    if (train and (c is None or c.data.any())) or _attrs(node).get("is_test", 1) == 0:
        raise imp.unsupported("training-mode Dropout is not imported (lincompile trains "
                              "without dropout); export the model in eval mode (model.eval())")
    if any(o and imp.uses[o] for o in node.output[1:]):
        raise imp.unsupported("its mask output is used")
    return imp.emit("identity", [imp.value(node.input[0])])


# ------------------------------------------------------------------ lincompile functions
#: lincompile's model-local functions (``backends/onnx_builder``) → their IR op, as each
#: op declares them (``OpDef.onnx_functions``).
FUNCTIONS = {f: op.name for op in OPS.values() for f in op.onnx_functions}
#: The attributes a function's name implies (``GeluTanh``: ``approximate="tanh"``).
FUNCTION_ATTRS = {f: a for op in OPS.values() for f, a in op.function_attrs.items()}


def _float(f: float) -> float:
    """The shortest decimal that rounds to the same float32: 0.9, not 0.89999997."""
    return float(str(np.float32(f)))


def function_call(imp: Importer, node: onnx.NodeProto) -> Result:
    """A call of a ``lincompile.*`` local function: its IR op, float attributes as given."""
    if any(a.type != onnx.AttributeProto.FLOAT for a in node.attribute):
        raise imp.unsupported("lincompile's functions take float attributes only")
    attrs = {**FUNCTION_ATTRS.get(node.op_type, {}),
             **{a.name: _float(a.f) for a in node.attribute}}
    op = FUNCTIONS[node.op_type]
    if op == "linear":   # weight and bias are parameters, as in a Gemm
        ins = [imp.value(node.input[0])] + [imp.linear_param(i) if imp.is_input(i) else
                                            imp.value(i) for i in node.input[1:]]
    else:
        ins = [imp.value(i) for i in node.input]
    return imp.emit(op, ins, n_out=len(node.output), **attrs)


IMPORTERS = {
    "Add": _binary("add"), "Flatten": flatten, "Gemm": gemm, "Identity": _unary("identity"),
    "MatMul": matmul, "Mul": _binary("mul"), "ReduceSum": reduce_sum, "Relu": _unary("relu"),
    "Reshape": reshape, "Sigmoid": _unary("sigmoid"),
    "SoftmaxCrossEntropyLoss": softmax_cross_entropy, "Sub": sub, "Tanh": _unary("tanh"),
    "Transpose": transpose,
}
IMPORTERS.update({
    "Cast": cast, "Dropout": dropout, "Gelu": gelu, "LayerNormalization": layer_normalization,
    "LeakyRelu": leaky_relu, "LogSoftmax": _softmax("log_softmax"),
    "Softmax": _softmax("softmax"),
})
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
