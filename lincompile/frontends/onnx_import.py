"""ONNX → lincompile IR: ``load_onnx(path | bytes | ModelProto) -> Graph``.

Reads models from ``torch.onnx.export`` (TorchScript and dynamo exporters), Keras, skl2onnx
(scikit-learn's MLPs, ``StandardScaler`` and linear models: the ``ai.onnx.ml`` ops of
:mod:`.onnx_ml`) and every file lincompile itself writes (model and training graphs, with
their ``lincompile.*`` local functions and metadata). The per-op import table is in
:mod:`.onnx_ops`; activations
that older exporters write as several nodes (GELU, SiLU) are recognised first, by
:mod:`.onnx_patterns`.

>>> import lincompile as lc, onnx
>>> from onnx import helper, numpy_helper, TensorProto
>>> import numpy as np
>>> w = numpy_helper.from_array(np.ones((3, 4), np.float32), "fc.weight")
>>> node = helper.make_node("Gemm", ["x", "fc.weight"], ["y"], name="/fc/Gemm", transB=1)
>>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
>>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
>>> g = lc.load_onnx(helper.make_model(helper.make_graph([node], "m", [x], [y], [w])))
>>> print(g)
graph m(x: float32[N, 4]) -> (y: float32[N, 3])
  param fc.weight: float32[3, 4]  (trainable)
  y: float32[N, 3] = linear(x, fc.weight)

**Initializers** (and ``Constant`` node outputs) become:

- *attributes* where an op takes them as such (Reshape's shape, ReduceSum's axes);
- *parameters* where they are consumed as a ``linear`` weight or bias, or a
  ``LayerNormalization`` scale or bias: trainable in a
  model graph, frozen in a training graph (``lincompile.role == "training"``, whose
  trainable parameters are graph inputs already). A weight stored as ``[C_in, C_out]``
  (``MatMul``, ``Gemm`` without ``transB``) is transposed back to ``[C_out, C_in]``; torch's
  pre-transposed ``onnx::MatMul_8`` gets the name of its module scope (``/fc1/MatMul`` →
  ``fc1.weight``), and ``Transpose`` + ``MatMul`` of a named weight keeps that weight;
- *constants* (``Param.const``: never trained) everywhere else (scalars, ``Gemm``'s C when it
  is not a bias, the operands of Add/Mul/Sub/MatMul).

**The layout map.** Where a trainable parameter is stored differently from the file (a
transposed or renamed weight, a reshaped bias), the graph's metadata ``lincompile.params``
maps it to its source tensor (or node attribute) and transform (:mod:`.layout`);
``write_trained`` uses it to write trained values back. **Classifier heads**: a model whose
outputs come from Softmax, LogSoftmax, skl2onnx's head or a ``LinearClassifier`` is imported
up to the logits (:mod:`.heads`), the head described in ``lincompile.head``.

An ``Identity`` of a constant is a constant of its own: exporters write one where two
parameters were distinct but equal when saved (torch's exporter deduplicates the zero biases
of a fresh Keras model's equal-width layers this way), so each trains on its own, and
``write_trained`` gives it an initializer of its own in the trained copy.

A weight is only transposed, reshaped or renamed when this node is its only user, and never
in lincompile's own files (there a Gemm without transB is a ``matmul``). Two things a saved
lincompile graph does not say come back as the same computation in another form: a
``matmul(a, W, trans_b=True)`` of a weight reads back as ``linear(a, W)``, and a trainable
parameter used by anything but ``linear`` reads back as a constant.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import LincompileError, ModelLoadError, ShapeError, UnsupportedOpError
from ..ir import Graph, Value
from .heads import Head, cut, find_head

DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64",
          onnx.TensorProto.INT64: "int64"}


def load_onnx(model: str | os.PathLike | bytes | onnx.ModelProto, batch: str | None = None,
              logits: str | None = None) -> Graph:
    """Import an ONNX model as a verified :class:`Graph` (see the module docstring).

    ``batch``: a name (``"N"``) for the leading dim of the data inputs where the file fixes
    it (``torch.onnx.export(model, x, path)`` fixes it to ``len(x)``); Reshape targets that
    copied the fixed batch follow. ``logits``: import only what computes this tensor (default:
    the logits before a classifier head, where the model ends in one; see :mod:`.heads`).
    """
    from .onnx_ops import import_node
    from .onnx_patterns import find_patterns

    proto = read_model(model)
    training = _meta(proto).get("lincompile.role") == "training"
    if training and logits is not None:
        raise LincompileError("logits: this is a training graph; choose the logits when "
                              "making it from the model")
    head = None if training else find_head(proto, logits)
    imp = Importer(cut(proto, head) if head is not None else proto, batch, head)
    fused = find_patterns(imp)   # multi-node GELU/SiLU: their inner nodes are marked done
    for node in imp.nodes:
        if id(node) not in imp.done:
            imp.node = node
            imp.bind(node, fused[id(node)](imp) if id(node) in fused else import_node(imp, node))
    imp.finish()
    if not training:  # a training file keeps the map to its own source model
        layout = imp.layout_map()
        imp.g.meta.pop("lincompile.params", None)
        imp.g.meta.pop("lincompile.head", None)
        if any(m != {"source": k, "transform": "identity"} for k, m in layout.items()):
            imp.g.meta["lincompile.params"] = json.dumps(layout)
        if head is not None and (head.nodes or head.outputs):
            imp.g.meta["lincompile.head"] = head.to_json()
    return imp.g.verify()


def node_attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes by name, as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _meta(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def read_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The model, with external data loaded, after ``onnx.checker`` accepts it."""
    what = "the model"
    try:
        if isinstance(model, onnx.ModelProto):
            proto = model
        elif isinstance(model, (bytes, bytearray)):
            proto = onnx.load_from_string(bytes(model))
        else:
            what = f"'{os.fspath(model)}'"
            proto = onnx.load(os.fspath(model))  # external data: relative to the file's dir
    except Exception as e:  # DecodeError, OSError, ...: one line, no protobuf traceback
        raise ModelLoadError(f"cannot read {what} as an ONNX model: {_one_line(e)}") from None
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelLoadError(f"initializer '{t.name}' keeps its data in an external file; "
                                 "pass the model's path to load_onnx so it can be found")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelLoadError(f"{what} fails onnx.checker: {_one_line(e)}") from None
    return proto


@dataclass
class Const:
    """A tensor known at import time; ``origin`` is the constant a Transpose was taken of."""

    name: str
    data: np.ndarray
    origin: str | None = None


class Importer:
    """The state of one import: the IR graph being built and the ONNX constants."""

    def __init__(self, proto: onnx.ModelProto, batch: str | None = None,
                 head: Head | None = None):
        self.proto = proto
        #: the classifier head cut off after the logits (a LinearClassifier's logits are
        #: its scores before post_transform: the cut model names them ``head.logits``)
        self.head = head
        gp = proto.graph
        #: The nodes, held once: ``done`` keeps ids, and protobuf makes new wrappers per access.
        self.nodes = list(gp.node)
        self.g = Graph(gp.name or "model")
        self.g.meta = {p.key: p.value for p in proto.metadata_props}
        self.training = self.g.meta.get("lincompile.role") == "training"
        #: lincompile's own file: its Gemm without transB is a ``matmul``, never a weight
        self.native = proto.producer_name == "lincompile"
        self.opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
        self.functions = {(f.domain, f.name) for f in proto.functions}
        self.node: onnx.NodeProto | None = None
        self.done: set[int] = set()
        self.uses = Counter(i for n in self.nodes for i in n.input if i)
        self.uses.update(o.name for o in gp.output)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.produced = {o for n in self.nodes for o in n.output}
        self.reserved = self.produced | {v.name for v in gp.input} | {
            t.name for t in gp.initializer}
        self.node_names: set[str] = set()
        self.consts = {t.name: Const(t.name, _tensor(t, f"initializer '{t.name}'"))
                       for t in gp.initializer}
        for n in self.nodes:  # Constant nodes have no inputs: take them all up front
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                self.consts[n.output[0]] = Const(n.output[0], _constant_value(n))
                self.done.add(id(n))
        outputs = {o.name for o in gp.output}
        for n in self.nodes:   # Identity of a constant: a constant of its own (see below)
            if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and \
                    n.input[0] in self.consts and n.output[0] not in outputs:
                src = self.consts[n.input[0]]
                self.consts[n.output[0]] = Const(n.output[0], src.data.copy(), src.origin)
                self.uses[n.input[0]] -= 1
                self.done.add(id(n))
        #: shape values folded at import (``.onnx_shapes``): tensor name -> its dims
        self.shapes: dict = {}
        #: parameter name -> its source tensor in the file and the transform between them
        self.layout: dict[str, dict[str, str]] = {}
        #: the fixed leading dims that ``batch`` replaced, and the name replacing them
        self.batch, self.fixed_batch = batch, set()
        state = {o.name[:-len(sfx)] for o in gp.output for sfx in (".next", ".grad")
                 if o.name.endswith(sfx)} | {"lr", "step"} if self.training else set()
        for vi in gp.input:
            if vi.name not in self.consts:  # old files list initializers as inputs too
                shape, dtype = _input_type(vi)
                if batch and shape and isinstance(shape[0], int) and vi.name not in state:
                    self.fixed_batch.add(shape[0])
                    shape[0] = batch
                self.g.input(vi.name, shape, dtype)

    # ------------------------------------------------------------------ names
    def tmp(self, base: str) -> str:
        """A fresh tensor name that no ONNX tensor of the model uses."""
        name, i = base, 1
        while name in self.g.values or name in self.reserved:
            name, i = f"{base}_{i}", i + 1
        return name

    def node_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.node_names:
            name, i = f"{base}_{i}", i + 1
        self.node_names.add(name)
        return name

    def scope(self) -> str | None:
        """torch's module scope of the current node: ``/fc1/MatMul`` → ``fc1``."""
        parts = (self.node.name or "").split("/")
        return parts[-2] if len(parts) >= 3 and parts[-2] else None

    # ------------------------------------------------------------------ values
    def const(self, name: str) -> Const | None:
        return self.consts.get(name)

    def value(self, name: str) -> Value:
        """The IR value of ONNX tensor ``name``; a constant becomes a const parameter."""
        if name in self.g.values:
            return self.g.values[name]
        if name in self.consts:
            return self.param(name, self.consts[name].data, const=True)
        if name in self.shapes:
            raise self.unsupported(f"it reads '{name}', a shape with the symbolic dims "
                                   f"{list(self.shapes[name].values)}, as data (a shape may "
                                   "only end in a Reshape target)")
        raise ModelLoadError(f"tensor '{name}' is used before it is defined")

    def param(self, name: str, data: np.ndarray, const: bool = False) -> Value:
        if str(data.dtype) not in DTYPES.values():
            raise ShapeError(f"constant '{name}' has dtype {data.dtype}; lincompile computes "
                             "in float32 or float64 (int64 for labels, shapes and steps)")
        v = self.g.param(name, np.asarray(data, order="C"), trainable=not (const or self.training))
        self.g.params[name].const = const
        return v

    def linear_param(self, name: str, data: np.ndarray | None = None, source: str | None = None,
                     transform: str = "identity") -> Value:
        """A linear weight or bias: a parameter (not a constant) if known at import time.

        ``data``: the value in lincompile's layout, made from the file's tensor ``source``
        (default ``name``) by ``transform`` (``identity``, ``transpose`` or ``reshape``).
        """
        p = self.g.params.get(name)
        if p is not None:  # first met as a constant: it is a weight after all
            p.const, p.trainable = False, not self.training
        if name in self.g.values:
            return self.g.values[name]
        self.layout[name] = {"source": source or name, "transform": transform}
        return self.param(name, self.consts[name].data if data is None else data)

    def attribute_param(self, base: str, data: np.ndarray, node: str, attribute: str,
                        transform: str) -> Value:
        """A trainable linear weight or bias that a node holds in an attribute (``ai.onnx.ml``
        ops): a new parameter named after ``base``, ``data`` in lincompile's layout, made from
        attribute ``attribute`` of node ``node`` by ``transform`` (:mod:`.layout`)."""
        name = self.tmp(base)
        self.layout[name] = {"source": node, "attribute": attribute, "transform": transform}
        return self.param(name, data)

    def layout_map(self) -> dict[str, dict[str, str]]:
        """For each trainable parameter: its source tensor and transform (see linear_param)."""
        return {k: self.layout.get(k, {"source": k, "transform": "identity"})
                for k, p in self.g.params.items() if p.trainable and not p.const}

    def batch_reshape(self, x: Value, shape: list[int]) -> list[int]:
        """A Reshape target whose first dim copied the fixed batch now copies the symbol."""
        if not (self.batch and shape and x.shape and x.shape[0] == self.batch
                and shape[0] in self.fixed_batch):
            return shape
        rest = list(shape[1:])
        if -1 in rest and all(isinstance(d, int) for d in x.shape[1:]):  # -1: what is left
            known = int(np.prod([d for d in rest if d != -1]))
            rest[rest.index(-1)] = int(np.prod(x.shape[1:])) // max(known, 1)
        return [0, *rest]

    def scalar(self, x: float, like: Value, what: str) -> Value:
        return self.param(self.tmp(f"{self.node.name or self.node.op_type}.{what}"),
                          np.array(x, like.dtype), const=True)

    def is_input(self, name: str) -> bool:
        """Produced by no node: a graph input or a constant (weight-like)."""
        return name not in self.produced or name in self.consts

    def fresh_use(self, name: str) -> bool:
        """``name`` is a constant used by this node only and not yet an IR value."""
        return name in self.consts and name not in self.g.values and self.uses[name] == 1

    # ------------------------------------------------------------------ nodes
    def emit(self, op: str, inputs: list[Value], n_out: int = 1,
             **attrs) -> Value | tuple[Value, ...]:
        """An IR node for the current ONNX node, with fresh output names (``bind`` renames)."""
        base = self.node.name or self.node.op_type
        outs = [self.tmp(f"{base}.{op}" if n_out == 1 else f"{base}.{op}.{i}")
                for i in range(n_out)]
        try:
            return self.g.apply(op, inputs, name=self.node_name(base), outputs=outs, **attrs)
        except ShapeError as e:
            raise ShapeError(f"ONNX node '{base}' ({self.node.op_type}): {e}") from None

    def bind(self, node: onnx.NodeProto, result) -> None:
        """Give the IR values of ``node`` its ONNX output names (None: nothing to bind)."""
        if result is None:
            return
        results = result if isinstance(result, tuple) else (result,)
        for name, v in zip(node.output, results):
            if v.name != name:
                if v.name in self.reserved:  # an existing tensor: name it again by a copy
                    v = self.emit("identity", [v])
                self.g.rename(v, name)

    def unsupported(self, why: str = "") -> UnsupportedOpError:
        """One line: the node, its op and opset, ``why``, and the ONNX ops lincompile reads."""
        from .onnx_ops import supported_text

        n = self.node
        domain = n.domain or "ai.onnx"
        op = n.op_type if domain == "ai.onnx" else f"{n.domain}.{n.op_type}"
        return UnsupportedOpError(
            f"ONNX op '{op}' (node '{n.name or '<unnamed>'}', opset "
            f"{self.opsets.get(domain, '?')}) is not supported{': ' + why if why else ''}; "
            f"lincompile imports {supported_text()}")

    def finish(self) -> None:
        for vi in self.proto.graph.output:
            v = self.value(vi.name)
            _check_output(vi, v)
            self.g.output(v)


def _tensor(t: onnx.TensorProto, what: str) -> np.ndarray:
    """The data of ``t``; data that does not fill its dims (or dims numpy cannot hold)
    is a ModelLoadError, not a numpy one."""
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelLoadError(f"{what}: cannot read its data as dtype "
                             f"{_dtype_name(t.data_type)}, dims {list(t.dims)}: "
                             f"{_one_line(e)}") from None


def _dtype_name(elem_type: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # UNDEFINED, STRING's object dtype, or no ONNX type at all
        return onnx.TensorProto.DataType.Name(elem_type) \
            if elem_type in onnx.TensorProto.DataType.values() else f"<ONNX type {elem_type}>"


#: Constant's value attributes (onnx.checker has checked their types): dtype of the array.
_CONSTANT_FORMS = {"value": None, "value_float": np.float32, "value_floats": np.float32,
                   "value_int": np.int64, "value_ints": np.int64}


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    where = f"Constant node '{node.name or node.output[0]}'"
    if len(node.attribute) != 1:
        raise ModelLoadError(f"{where} has {len(node.attribute)} attributes; a Constant has "
                             "exactly one (its value)")
    a = node.attribute[0]
    if a.name not in _CONSTANT_FORMS:
        raise UnsupportedOpError(f"{where}: attribute '{a.name}' is not supported; lincompile "
                                 f"reads {', '.join(_CONSTANT_FORMS)}")
    val, dtype = helper.get_attribute_value(a), _CONSTANT_FORMS[a.name]
    return _tensor(val, where) if dtype is None else np.array(val, dtype)


def _input_type(vi: onnx.ValueInfoProto) -> tuple[list, str]:
    """(shape, dtype) of a graph input; an unnamed unknown dim gets a name of its own."""
    if not vi.type.HasField("tensor_type"):
        raise ShapeError(f"input '{vi.name}' is a {vi.type.WhichOneof('value')}; lincompile "
                         "takes tensors only")
    tt = vi.type.tensor_type
    if tt.elem_type not in DTYPES:
        raise ShapeError(f"input '{vi.name}' has dtype {_dtype_name(tt.elem_type)}; "
                         "lincompile takes float32 "
                         "(float64 too) and int64 class labels or step counts")
    if not tt.HasField("shape"):
        raise ShapeError(f"input '{vi.name}' has no shape; lincompile needs at least its rank")
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{vi.name}_d{i}")
             for i, d in enumerate(tt.shape.dim)]
    return shape, DTYPES[tt.elem_type]


def _check_output(vi: onnx.ValueInfoProto, v: Value) -> None:
    """The declared type of a graph output, where given, must be what lincompile computes."""
    tt = vi.type.tensor_type
    if tt.elem_type and DTYPES.get(tt.elem_type) != v.dtype:
        raise ShapeError(f"output '{vi.name}' is declared with ONNX dtype {tt.elem_type} but "
                         f"computes {v.dtype}")
    if tt.HasField("shape") and len(tt.shape.dim) != len(v.shape):
        raise ShapeError(f"output '{vi.name}' is declared with rank {len(tt.shape.dim)} but "
                         f"computes {v!r}")
