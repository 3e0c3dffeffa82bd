"""The ONNX import table: one small function per ONNX op type, returning IR values.

Each function reads one ONNX node through the :class:`~.onnx_import.Importer` and emits
IR nodes; ``None`` means the node was folded (a constant) or bound by the function itself
(a fused ``MatMul`` + ``Add``). scikit-learn's ``ai.onnx.ml`` ops are in :mod:`.onnx_ml`.
Everything not listed in :data:`SUPPORTED` (nor a call of lincompile's own functions)
raises :class:`UnsupportedOpError`.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..backends.onnx_builder import DOMAIN, FUSED_KEY, OnnxBuilder
from ..errors import LincompileError, ModelLoadError, ShapeError
from ..ir import Value
from ..ops import OPS, get_op
from ..ops.concat import last_axis
from ..ops.preview import DOMAIN as PREVIEW
from .onnx_import import DTYPES, Const, Importer
from .onnx_import import node_attrs as _attrs
from .onnx_ml import DOMAIN as ML
from .onnx_ml import IMPORTERS as ML_IMPORTERS
from .onnx_shapes import fold as fold_shape
from .onnx_shapes import reshape_target

#: What an import function returns: the node's output value(s), or None (see above).
Result = Value | tuple[Value, ...] | None



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
    folded = reshape_target(imp, node.input[1], imp.value(node.input[0]).shape)
    shape = folded if folded is not None else _ints(imp, node.input[1], "the target shape")
    if _attrs(node).get("allowzero", 0) and 0 in shape:
        raise imp.unsupported("allowzero=1 with a 0 in the target shape")
    x = imp.value(node.input[0])
    return imp.emit("reshape", [x], shape=imp.batch_reshape(x, shape))


def concat(imp: Importer, node: onnx.NodeProto) -> Result:
    """Concat along the last axis (``torch.cat(xs, dim=-1)``; ``dim=1`` of 2-D tensors)."""
    xs = [imp.value(i) for i in node.input]
    if "axis" not in _attrs(node):
        raise imp.unsupported("its required attribute 'axis' is missing")
    _last_axis(imp, xs[0], _attrs(node)["axis"], "Concat")
    return imp.emit("concat", xs, axis=-1) if len(xs) > 1 else imp.emit("identity", xs)


def slice_(imp: Importer, node: onnx.NodeProto) -> Result:
    """Slice of the last axis with constant starts/ends/axes and step 1 (``x[..., a:b]``)."""
    x = imp.value(node.input[0])
    starts, ends = (_ints(imp, node.input[k], what) for k, what in ((1, "starts"),
                                                                   (2, "ends")))
    opt = [node.input[k] if len(node.input) > k and node.input[k] else "" for k in (3, 4)]
    axes = _ints(imp, opt[0], "axes") if opt[0] else list(range(len(starts)))
    steps = _ints(imp, opt[1], "steps") if opt[1] else [1] * len(starts)
    c = x.shape[-1] if x.shape else None
    if len(starts) != 1 or len(axes) != 1 or len(ends) != 1 or steps != [1] \
            or not last_axis(axes[0], len(x.shape)) or not isinstance(c, int):
        raise imp.unsupported(f"only a Slice of the fixed last axis with step 1 is imported "
                              f"(axes {axes}, steps {steps} of '{x.name}' {list(x.shape)})")
    start, stop = (min(max(v + c if v < 0 else v, 0), c) for v in (starts[0], ends[0]))
    return imp.emit("slice_last", [x], start=start, stop=max(start, stop))


def _reduce_args(imp: Importer, node: onnx.NodeProto) -> tuple[list[int] | None, bool, bool]:
    """A Reduce* node's axes (None: all), keepdims, and whether it is a no-op (empty axes
    with noop_with_empty_axes). The axes are an attribute before opset 13 (ReduceSum) or
    18 (the others), an input since."""
    at = _attrs(node)
    axes = at.get("axes")
    if len(node.input) > 1 and node.input[1]:
        axes = _ints(imp, node.input[1], "the axes")
    noop = not axes and bool(at.get("noop_with_empty_axes", 0))
    return (list(axes) if axes else None), bool(at.get("keepdims", 1)), noop


def reduce_sum(imp: Importer, node: onnx.NodeProto) -> Result:
    axes, keepdims, noop = _reduce_args(imp, node)
    x = imp.value(node.input[0])
    if noop:
        return imp.emit("identity", [x])
    return imp.emit("reduce_sum", [x], axes=axes, keepdims=keepdims)


def _feature_axes(imp: Importer, x: Value, axes: list[int] | None) -> list[int]:
    """``axes`` of ``x``, refused unless every reduced dim is a fixed size (not the batch)."""
    r = len(x.shape)
    ax = list(range(r)) if axes is None else axes
    if not r or any(not -r <= a < r for a in ax):
        raise imp.unsupported(f"axes {ax} out of range for '{x.name}' {list(x.shape)}")
    if any(not isinstance(x.shape[a], int) for a in ax):
        raise imp.unsupported(f"it reduces '{x.name}' {list(x.shape)} over axes {ax}, which "
                              "include the batch; only reductions over feature axes (fixed "
                              "sizes, such as dim=-1) are imported")
    return ax


def reduce_mean(imp: Importer, node: onnx.NodeProto) -> Result:
    """ReduceMean over feature axes: ``reduce_sum / n`` (torch's CPU mean, a sum and then a
    division by the count)."""
    axes, keepdims, noop = _reduce_args(imp, node)
    x = imp.value(node.input[0])
    if noop:
        return imp.emit("identity", [x])
    ax = _feature_axes(imp, x, axes)
    total = imp.emit("reduce_sum", [x], axes=ax, keepdims=keepdims)
    n = int(np.prod([x.shape[a] for a in ax]))
    return imp.emit("div", [total, imp.scalar(n, total, "count")])


def reduce_l2(imp: Importer, node: onnx.NodeProto) -> Result:
    """ReduceL2 over the last axis with keepdims (torch's ``norm(dim=-1, keepdim=True)``, as
    ``F.normalize`` writes it): ``norm_sqrt(reduce_sum(x · x))``, torch's values and
    gradients (0 at an all-zero row)."""
    axes, keepdims, noop = _reduce_args(imp, node)
    x = imp.value(node.input[0])
    if noop or axes is None or len(axes) != 1 or not keepdims:
        raise imp.unsupported(f"only a ReduceL2 over the last axis with keepdims=1 is "
                              f"imported (axes {axes}, keepdims {int(keepdims)})")
    _last_axis(imp, x, axes[0], "ReduceL2")
    _feature_axes(imp, x, axes)
    squares = imp.emit("reduce_sum", [imp.emit("mul", [x, x])], axes=[-1], keepdims=True)
    return imp.emit("norm_sqrt", [squares])


def expand(imp: Importer, node: onnx.NodeProto) -> Result:
    """Expand to a shape of the same rank (torch's ``F.normalize`` expands the norm to its
    input's shape): the identity where nothing grows, else a ``broadcast_to`` like a tensor
    of the target shape."""
    x = imp.value(node.input[0])
    dims = imp.shapes.get(node.input[1])
    if dims is not None:
        target = list(dims.values)
    else:
        target = _ints(imp, node.input[1], "the target shape")
    if len(target) != len(x.shape):
        raise imp.unsupported(f"an Expand of '{x.name}' {list(x.shape)} to {target}: only "
                              "to a shape of the same rank")
    out = [d if t == 1 else t for d, t in zip(x.shape, target)]
    if out == list(x.shape):
        return imp.emit("identity", [x])
    # broadcast_to reads only the shape of its second input: any tensor of the target shape
    # will do (the batch dim is the same symbol throughout). First the tensors the graph
    # takes a Shape of (TorchScript's F.normalize), then those the result is combined with
    # (dynamo's: Concat(Shape(x)[:1], [C]) for the hidden [N, C] it divides), then any.
    users = [i for n in imp.consumers.get(node.output[0], []) for i in n.input]
    shaped = [n.input[0] for n in imp.nodes if n.op_type == "Shape" and n.input]
    for name in [*shaped, *users, *imp.g.values]:
        like = imp.g.values.get(name)
        if like is not None and list(like.shape) == out and like.dtype == x.dtype:
            return imp.emit("broadcast_to", [x, like])
    raise imp.unsupported(f"an Expand of '{x.name}' {list(x.shape)} to {target}: no tensor "
                          "of that shape is known at this point of the graph")


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


def swish(imp: Importer, node: onnx.NodeProto) -> Result:
    """Swish (opset 24) ``x · sigmoid(alpha · x)``: SiLU when alpha is 1."""
    alpha = _attrs(node).get("alpha", 1.0)
    if alpha != 1:
        raise imp.unsupported(f"alpha={_float(alpha)} (only alpha=1, which is SiLU)")
    return imp.emit("silu", [imp.value(node.input[0])])


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


def batch_normalization(imp: Importer, node: onnx.NodeProto) -> Result:
    """torch.nn.BatchNorm1d over the features of ``[N, C]`` in its inference form: the running
    statistics stay constants, scale and bias train (torch's BatchNorm in ``eval()`` mode,
    as when fine-tuning with frozen statistics): ``(x − mean) · (1/√(var + ε)) · scale + bias``.
    """
    at = _attrs(node)
    if at.get("training_mode", 0) or any(o and imp.uses[o] for o in node.output[1:]):
        raise imp.unsupported("only the inference form (training_mode=0, one output) is "
                              "imported: the running statistics stay fixed")
    x = imp.value(node.input[0])
    if len(x.shape) != 2:
        raise imp.unsupported(f"only [N, C] inputs (BatchNorm1d over features), not "
                              f"'{x.name}' {list(x.shape)}")
    mean, var = (imp.const(i) for i in node.input[3:5])
    if mean is None or var is None:
        raise imp.unsupported("its running mean and variance must be constants")
    eps = _float(at.get("epsilon", 1e-5))
    dt = np.dtype(x.dtype)
    inv = (1 / np.sqrt(var.data.astype(dt) + dt.type(eps))).astype(dt)
    base = node.name or "BatchNormalization"
    minus_mean = imp.param(imp.tmp(f"{base}.minus_mean"), (-mean.data).astype(dt), const=True)
    inv_std = imp.param(imp.tmp(f"{base}.inv_std"), inv, const=True)
    scale, bias = (imp.linear_param(i) if imp.is_input(i) else imp.value(i)
                   for i in node.input[1:3])
    h = imp.emit("mul", [imp.emit("add", [x, minus_mean]), inv_std])
    return imp.emit("add", [imp.emit("mul", [h, scale]), bias])


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


# ------------------------------------------------------------------ more activations
def _snap(value: float, exact: float) -> float:
    """A float32 attribute that rounds ``exact`` (torch's double constant) stands for it."""
    return exact if np.float32(value) == np.float32(exact) else _float(value)


def _alpha_op(op: str, default: float = 1.0):
    """Elu, Celu: one ``alpha`` attribute."""
    return lambda imp, node: imp.emit(op, [imp.value(node.input[0])],
                                      alpha=_float(_attrs(node).get("alpha", default)))


def selu(imp: Importer, node: onnx.NodeProto) -> Result:
    """torch's SELU (ONNX's default alpha and gamma are its constants in float32)."""
    from ..ops.activations_exp import SELU_ALPHA, SELU_SCALE

    at = _attrs(node)
    alpha, gamma = at.get("alpha", SELU_ALPHA), at.get("gamma", SELU_SCALE)
    if _snap(alpha, SELU_ALPHA) != SELU_ALPHA or _snap(gamma, SELU_SCALE) != SELU_SCALE:
        raise imp.unsupported(f"alpha={_float(alpha)}, gamma={_float(gamma)} (only the "
                              "defaults, torch.nn.SELU's constants)")
    return imp.emit("selu", [imp.value(node.input[0])])


def softplus(imp: Importer, node: onnx.NodeProto) -> Result:
    """ONNX's Softplus, log(1 + e^x) for every x: beta 1 and no threshold (torch's
    exports with a beta or threshold are node patterns, see onnx_patterns)."""
    return imp.emit("softplus", [imp.value(node.input[0])], beta=1.0, threshold=float("inf"))


def clip(imp: Importer, node: onnx.NodeProto) -> Result:
    """Clip (torch's Hardtanh, ReLU6, clamp): constant bounds, attributes before opset 11;
    a missing bound is the dtype's lowest or highest value, as ONNX says. A Clip of a norm
    (ReduceL2) without a max is torch's ``clamp_min`` of ``F.normalize``: ``max(norm, eps)``."""
    x = imp.value(node.input[0])
    if x.dtype not in ("float32", "float64"):
        raise imp.unsupported(f"'{x.name}' is {x.dtype}; only float tensors are clipped")
    at, bounds, info = _attrs(node), [], np.finfo(x.dtype)
    for k, (name, extreme) in enumerate((("min", info.min), ("max", info.max))):
        value = _float(at[name]) if name in at else float(extreme)
        if len(node.input) > k + 1 and node.input[k + 1]:
            c = imp.const(node.input[k + 1])
            if c is None or c.data.size != 1:
                raise imp.unsupported(f"its {name} must be a constant scalar")
            v = c.data.reshape(-1)[0]
            value = _float(v) if v.dtype == np.float32 else float(v)
        bounds.append(value)
    no_max = "max" not in at and not (len(node.input) > 2 and node.input[2])
    if no_max and _of_norm(imp, node):
        # torch's F.normalize writes clamp_min(norm, eps) as a Clip without a max: torch's
        # clamp_min there (an infinite norm stays infinite, and passes its gradient on)
        return imp.emit("max", [x, imp.scalar(bounds[0], x, "clamp_min")])
    return imp.emit("hardtanh", [x], min_val=bounds[0], max_val=bounds[1])


def _of_norm(imp: Importer, node: onnx.NodeProto) -> bool:
    """``node``'s first input is the output of a ReduceL2 (a norm)."""
    return any(n.op_type == "ReduceL2" and node.input[0] in n.output for n in imp.nodes)


def hard_sigmoid(imp: Importer, node: onnx.NodeProto) -> Result:
    """max(0, min(1, alpha·x + beta)); torch's alpha, float32(1/6), stands for 1/6."""
    at = _attrs(node)
    return imp.emit("hardsigmoid", [imp.value(node.input[0])],
                    alpha=_snap(at.get("alpha", 0.2), 1 / 6), beta=_float(at.get("beta", 0.5)))


def prelu(imp: Importer, node: onnx.NodeProto) -> Result:
    """PRelu: an initializer slope is a trainable parameter (torch.nn.PReLU's weight). The
    dynamo exporter's ``val_1`` [1, C] becomes torch's ``<module>.weight`` [C] again."""
    import ast

    s, c = node.input[1], imp.const(node.input[1])
    if c is None or not imp.is_input(s):
        return imp.emit("prelu", [imp.value(node.input[0]), imp.value(s)])
    scopes = next((m.value for m in node.metadata_props
                   if m.key == "pkg.torch.onnx.name_scopes"), "")
    try:
        module = ".".join(ast.literal_eval(scopes)[1:-1]) if scopes else ""
    except (ValueError, SyntaxError, TypeError):
        module = ""
    name = f"{module}.weight"
    if (module and c.data.ndim > 1 and set(c.data.shape[:-1]) == {1} and imp.fresh_use(s)
            and name not in imp.reserved | set(imp.g.values)):
        slope = imp.linear_param(name, c.data.reshape(-1), source=s, transform="reshape")
    else:
        slope = imp.linear_param(s)
    return imp.emit("prelu", [imp.value(node.input[0]), slope])


def pow_(imp: Importer, node: onnx.NodeProto) -> Result:
    """``x ** p`` by a constant scalar exponent (a Constant or an initializer)."""
    x = imp.value(node.input[0])
    c = imp.const(node.input[1])
    if c is None:
        raise imp.unsupported(f"only a Pow by a constant exponent is imported ('{node.input[1]}' "
                              "is computed or fed)")
    if c.data.size != 1 or c.data.ndim > len(x.shape):
        raise imp.unsupported(f"only a Pow by a scalar exponent is imported ('{node.input[1]}' "
                              f"has shape {list(c.data.shape)})")
    if not np.issubdtype(c.data.dtype, np.number) or not np.isfinite(c.data).all():
        raise imp.unsupported(f"the exponent '{node.input[1]}' must be a finite number")
    return imp.emit("pow", [x], exponent=float(c.data.reshape(())))


def min_max(op: str):
    """``Max``/``Min`` of two tensors (torch.maximum/minimum; numpy broadcasting)."""
    def run(imp: Importer, node: onnx.NodeProto) -> Result:
        if len(node.input) != 2:
            raise imp.unsupported(f"only a {node.op_type} of two inputs is imported (got "
                                  f"{len(node.input)})")
        return imp.emit(op, [imp.value(i) for i in node.input])
    return run


#: torch's simple math on tensors (``-x``, ``abs``, ``sqrt``, ``x ** 2``, ``maximum``, ...)
MATH = {
    "Abs": _unary("abs"), "Log": _unary("log"), "Max": min_max("max"), "Min": min_max("min"),
    "Neg": _unary("neg"), "Pow": pow_, "Reciprocal": _unary("reciprocal"),
    "Sqrt": _unary("sqrt"),
}

ACTIVATIONS = {
    "Celu": _alpha_op("celu"), "Clip": clip, "Elu": _alpha_op("elu"), "Exp": _unary("exp"),
    "HardSigmoid": hard_sigmoid, "HardSwish": _unary("hardswish"), "Mish": _unary("mish"),
    "PRelu": prelu, "Selu": selu, "Softplus": softplus, "Softsign": _unary("softsign"),
}


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
    given = {**OPS[op].attrs, **attrs}   # (an attribute left out takes its default)
    for k, derive in OPS[op].onnx_derived.items():   # written beside what they follow from
        if k in attrs and np.float32(attrs[k]) != np.float32(derive(given)):
            raise ModelLoadError(f"node '{node.name}' ({node.op_type}): attribute {k} = "
                                 f"{attrs[k]:g} does not follow from the others (they give "
                                 f"{derive(given):g}); was the file edited?")
    attrs = {k: v for k, v in attrs.items() if k not in OPS[op].onnx_derived}
    if op == "linear":   # weight and bias are parameters, as in a Gemm
        ins = [imp.value(node.input[0])] + [imp.linear_param(i) if imp.is_input(i) else
                                            imp.value(i) for i in node.input[1:]]
    else:
        ins = [imp.value(i) for i in node.input]
    return imp.emit(op, ins, n_out=len(node.output), **attrs)


# ------------------------------------------------------------------ ai.onnx.preview.training
def _preview_attrs(imp: Importer, node: onnx.NodeProto, names: dict[str, str]) -> dict:
    """The IR attributes (``names``: ONNX name → IR name) with the spec's defaults."""
    schema = onnx.defs.get_schema(node.op_type, imp.opsets.get(PREVIEW, 1), PREVIEW)
    given = _attrs(node)
    out = {}
    for onnx_name, ir_name in names.items():
        if onnx_name in given:
            value = given[onnx_name]
        elif schema.attributes[onnx_name].default_value.type:
            value = helper.get_attribute_value(schema.attributes[onnx_name].default_value)
        else:
            raise imp.unsupported(f"attribute '{onnx_name}' is required")
        out[ir_name] = value.decode() if isinstance(value, bytes) else _float(value)
    return out


def _optimizer(op: str, n_state: int, names: dict[str, str]):
    """An ONNX optimizer node (inputs R, T, X1..Xn, G1..Gn, then each state's n tensors;
    outputs the new X1..Xn, then each new state) as one IR node per tensor."""
    def run(imp: Importer, node: onnx.NodeProto) -> Result:
        attrs = _preview_attrs(imp, node, names)
        if op == "onnx_momentum":
            mode = attrs.pop("mode")
            if mode not in ("standard", "nesterov"):
                raise imp.unsupported(f"mode '{mode}' (only 'standard' and 'nesterov')")
            attrs["nesterov"] = mode == "nesterov"
        ins, outs = list(node.input), list(node.output)
        n, rest = divmod(len(ins) - 2, 2 + n_state)
        if n < 1 or rest or len(outs) != n * (1 + n_state) or not all(ins) or not all(outs):
            raise imp.unsupported(f"inputs R, T and {2 + n_state} tensors per optimized tensor "
                                  f"(got {len(ins)}), and all {1 + n_state} outputs per tensor "
                                  f"(got {len(outs)})")
        r, t = imp.value(ins[0]), imp.value(ins[1])
        lists = [ins[2 + j * n: 2 + (j + 1) * n] for j in range(2 + n_state)]
        results = [imp.emit(op, [imp.value(x[i]) for x in lists] + [t, r], n_out=1 + n_state,
                            **attrs) for i in range(n)]
        return tuple(res[k] for k in range(1 + n_state) for res in results)
    return run


def _recompute(imp: Importer, names: list[str], feeds: list[Value], y: Value) -> Value:
    """``y`` computed from ``feeds`` in place of the tensors ``names``: the nodes between
    them and ``y`` emitted again where a fed value differs from the named one."""
    swap = {imp.value(k).name: f for k, f in zip(names, feeds) if imp.value(k) is not f}
    if not swap:
        return y
    needed, chain = {y.name}, []
    for n in reversed(imp.g.nodes):
        if any(o.name in needed for o in n.outputs) and not any(o.name in swap
                                                                  for o in n.outputs):
            needed.update(i.name for i in n.inputs)
            chain.append(n)
    now = dict(swap)
    for n in reversed(chain):
        if any(i.name in now for i in n.inputs):
            base = f"{imp.node.name or 'Gradient'}/{n.name}"
            res = imp.g.apply(n.op, [now.get(i.name, i) for i in n.inputs],
                              name=imp.node_name(base),
                              outputs=[imp.tmp(f"{base}.{i}") for i in range(len(n.outputs))],
                              **n.attrs)
            now.update(zip((o.name for o in n.outputs),
                           res if isinstance(res, tuple) else (res,)))
    return now.get(y.name, y)


def gradient(imp: Importer, node: onnx.NodeProto) -> Result:
    """``Gradient(xs, zs, y)``: lincompile's autodiff of the graph from ``xs`` to ``y`` at
    the fed values; for a non-scalar ``y``, the gradient of the sum of its elements."""
    from ..autodiff import append_grads

    at = _attrs(node)
    xs = [s.decode() for s in at.get("xs", [])]
    zs = [s.decode() for s in at.get("zs", [])]
    y = at.get("y", b"").decode()
    if not xs or len(node.input) != len(xs) + len(zs) or len(node.output) > len(xs):
        raise imp.unsupported(f"inputs must be the values of xs then zs ({len(xs)} + "
                              f"{len(zs)}), and at most one output per x")
    if y not in imp.g.values and y not in imp.consts:
        raise imp.unsupported(f"y '{y}' must be computed before the Gradient node")
    feeds = [imp.value(i) for i in node.input]
    of = _recompute(imp, xs + zs, feeds, imp.value(y))
    if of.shape != ():
        of = imp.emit("reduce_sum", [of])
    grads = append_grads(imp.g, of, feeds[:len(xs)])
    imp.node_names.update(n.name for n in imp.g.nodes)
    seen: set[int] = set()
    names, values = [], []
    for name, x in zip(node.output, feeds):
        v = grads[x.name]
        if not name:   # an output left out
            continue
        if id(v) in seen or v.name in imp.g.params:   # name a copy
            v = imp.emit("identity", [v])
        seen.add(id(v))
        names.append(name)
        values.append(v)
    imp.bind(helper.make_node("Gradient", [], names), tuple(values))
    return None


PREVIEW_IMPORTERS = {
    "Adagrad": _optimizer("adagrad", 1, {"decay_factor": "lr_decay", "epsilon": "eps",
                                         "norm_coefficient": "weight_decay"}),
    "Momentum": _optimizer("onnx_momentum", 1, {"alpha": "alpha", "beta": "beta",
                                                "mode": "mode",
                                                "norm_coefficient": "norm_coefficient"}),
    "Adam": _optimizer("onnx_adam", 2, {a: a for a in ("alpha", "beta", "epsilon",
                                                       "norm_coefficient",
                                                       "norm_coefficient_post")}),
    "Gradient": gradient,
}


IMPORTERS = {
    "Add": _binary("add"), "Concat": concat, "Div": _binary("div"), "Flatten": flatten,
    "Gemm": gemm,
    "Identity": _unary("identity"),
    "MatMul": matmul, "Mul": _binary("mul"), "ReduceSum": reduce_sum, "Relu": _unary("relu"),
    "ReduceMean": reduce_mean, "ReduceL2": reduce_l2, "Expand": expand,
    "Reshape": reshape, "Sigmoid": _unary("sigmoid"), "Slice": slice_,
    "SoftmaxCrossEntropyLoss": softmax_cross_entropy, "Sub": sub, "Tanh": _unary("tanh"),
    "Transpose": transpose,
}
IMPORTERS.update({
    "BatchNormalization": batch_normalization, "Cast": cast, "Dropout": dropout, "Gelu": gelu,
    "LayerNormalization": layer_normalization,
    "LeakyRelu": leaky_relu, "LogSoftmax": _softmax("log_softmax"),
    "Softmax": _softmax("softmax"), "Swish": swish,
})
IMPORTERS.update(ACTIVATIONS)
IMPORTERS.update(MATH)
#: The ONNX ops a user's model may contain, by domain (lincompile's own files also call its
#: model-local ``lincompile.*`` functions, which are not listed: no other producer writes them).
SUPPORTED = {"": sorted([*IMPORTERS, "Constant"]), ML: sorted(ML_IMPORTERS),
             PREVIEW: sorted(PREVIEW_IMPORTERS)}


def supported_text() -> str:
    """The ops of :data:`SUPPORTED` on one line, for error messages."""
    return "; ".join(f"{d}: " * bool(d) + ", ".join(ops) for d, ops in SUPPORTED.items())


# ------------------------------------------------------------------ portable files
def _fused_groups(imp: Importer) -> dict[str, list]:
    """Node name → its record in a portable file's ``lincompile.fused`` metadata (read once;
    the key is taken out of the graph's metadata, a re-export writes it afresh)."""
    groups = getattr(imp, "fused_groups", None)
    if groups is None:
        groups = {}
        text = imp.g.meta.pop(FUSED_KEY, None)
        try:
            for rec in json.loads(text) if text else []:
                name, op, attrs, ins, outs, nodes = rec
                groups.update((n, [name, op, attrs, ins, outs, set(nodes)]) for n in nodes)
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"metadata '{FUSED_KEY}' is not lincompile's: {e}") from None
        imp.fused_groups = groups
    return groups


def _same_nodes(imp: Importer, mine: OnnxBuilder, theirs: list[onnx.NodeProto],
                outs: list[str]) -> bool:
    """``theirs`` is what lincompile writes for the op (``mine``), up to the names of the
    tensors internal to it; those are used by no other node and are no graph output."""
    if len(mine.nodes) != len(theirs):
        return False
    inits = {t.name: t for t in mine.initializers}
    ours: set[str] = set()
    rename: dict[str, str] = {}
    for a, b in zip(mine.nodes, theirs):
        if (a.op_type, a.domain, len(a.input), len(a.output)) != \
                (b.op_type, b.domain, len(b.input), len(b.output)):
            return False
        key = lambda n: sorted(x.SerializeToString() for x in n.attribute)
        if key(a) != key(b):
            return False
        for x, y in zip(a.input, b.input):
            if x in rename:
                ok = rename[x] == y
            elif x in inits:
                c = imp.const(y)
                ok = c is not None and np.array_equal(c.data, numpy_helper.to_array(inits[x]))
            else:
                ok = x == y
            if not ok:
                return False
        for x, y in zip(a.output, b.output):
            if x in outs:
                if x != y:
                    return False
            else:
                rename[x] = y
                ours.add(y)
    members = {id(n) for n in theirs}
    outside = {i for n in imp.nodes if id(n) not in members for i in n.input}
    outside |= {o.name for o in imp.proto.graph.output}
    return not (ours & outside)


def fused(imp: Importer, record: list) -> Result:
    """One IR op that a portable file wrote out as several nodes: checked against what
    lincompile writes for it, then imported as that op."""
    name, op, attrs, ins, outs, names = record
    theirs = [n for n in imp.nodes if n.name in names]
    mine = OnnxBuilder({}, portable=True)
    mine.prefix = name
    try:
        opdef = get_op(op)
        opdef.onnx(mine, ins, outs, **opdef.check_attrs(attrs, name))
        same = _same_nodes(imp, mine, theirs, outs)
    except (LincompileError, TypeError, KeyError):
        same = False
    if not same:
        raise imp.unsupported(f"its nodes are recorded ({FUSED_KEY}) as lincompile's op "
                              f"'{op}' '{name}' but differ from what lincompile writes for it "
                              "(was the file edited?)")
    imp.done.update(id(n) for n in theirs)
    stand_in = helper.make_node(op, ins, outs, name=name)
    here, imp.node = imp.node, stand_in
    imp.bind(stand_in, imp.emit(op, [imp.value(i) for i in ins], n_out=len(outs), **attrs))
    imp.node = here
    return None


def import_node(imp: Importer, node: onnx.NodeProto) -> Result:
    """Import one ONNX node, or raise UnsupportedOpError naming it."""
    record = _fused_groups(imp).get(node.name)
    if record is not None:
        return fused(imp, record)
    if fold_shape(imp, node):   # Shape and the arithmetic on it: no IR node
        return None
    if node.domain in ("", "ai.onnx") and node.op_type in IMPORTERS:
        return IMPORTERS[node.op_type](imp, node)
    if node.domain == ML and node.op_type in ML_IMPORTERS:
        return ML_IMPORTERS[node.op_type](imp, node)
    if node.domain == PREVIEW and node.op_type in PREVIEW_IMPORTERS:
        return PREVIEW_IMPORTERS[node.op_type](imp, node)
    if node.domain == DOMAIN and node.op_type in FUNCTIONS \
            and (DOMAIN, node.op_type) in imp.functions:
        return function_call(imp, node)
    raise imp.unsupported()
