"""ONNX export (standard ops, one opset) and the onnxruntime backend.

Two forms of the same graph: the default one writes lincompile's fused ops (optimizer
updates, loss and activation gradients) as model-local functions in the ``lincompile``
domain; the portable one (``portable=True``) writes their bodies out in place, so the file
is one flat graph of default-domain ops with one opset import, for any ONNX runtime. The
portable file records in its metadata (``lincompile.fused``) which nodes make up each fused
op, so ``load_onnx`` reads it back as the same ops.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import __version__
from ..errors import CompileError, FeedError, LincompileError
from ..files import write_atomically
from ..ir import Graph, Value
from ..ops import get_op
from .base import Executable
from .onnx_builder import DOMAIN, FUSED_KEY, OPSET, OnnxBuilder, _np_to_proto

ONNX_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
               "int64": TensorProto.INT64}


def _value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, ONNX_DTYPES[v.dtype], list(v.shape))


def to_onnx(graph: Graph, portable: bool = False) -> onnx.ModelProto:
    """The graph as an ONNX model: parameters and constants become initializers.

    ``portable``: default-domain nodes only (see the module docstring).
    """
    graph.verify()
    b = OnnxBuilder({v.name: v.shape for v in graph.values.values()}, portable=portable)
    fused = []
    for n in graph.nodes:
        lower = get_op(n.op).onnx
        if lower is None:
            raise CompileError(f"node '{n.name}': op '{n.op}' has no ONNX lowering")
        b.prefix, b.inlined, first = n.name, False, len(b.nodes)
        ins, outs = [v.name for v in n.inputs], [v.name for v in n.outputs]
        lower(b, ins, outs, **n.attrs)
        if b.inlined:
            fused.append([n.name, n.op, n.attrs, ins, outs, [x.name for x in b.nodes[first:]]])
    inits = [_np_to_proto(p.data, k) for k, p in graph.params.items()]
    g = helper.make_graph(b.nodes, graph.name, [_value_info(v) for v in graph.inputs],
                          [_value_info(v) for v in graph.outputs], inits + b.initializers)
    functions = [] if portable else list(b.functions.values())
    opsets = [helper.make_opsetid("", OPSET)]
    if functions:
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    model = helper.make_model(g, opset_imports=opsets, functions=functions,
                              producer_name="lincompile", producer_version=__version__)
    model.ir_version = 9  # onnx ≥ 1.15 and every onnxruntime that runs opset 18 read it
    props = {k: str(v) for k, v in graph.meta.items() if k != FUSED_KEY}
    if fused:
        props[FUSED_KEY] = json.dumps(fused, separators=(",", ":"))
    helper.set_model_props(model, props)
    return model


#: Above this many bytes of tensor data a model is saved with its tensors in ``NAME.data``
#: beside it (one protobuf message cannot pass 2 GiB).
EXTERNAL_DATA_BYTES = 2**31 - 2**26


def save_onnx(graph: Graph, path: str | os.PathLike, portable: bool = False,
              inline: bool | None = None, external_data: bool | None = None) -> Path:
    """Write ``graph`` to ``path`` after ``onnx.checker`` (full check) accepts it.

    ``portable=True`` writes one flat graph of default-domain ops (no local functions, one
    opset import) that every ONNX runtime can run; it loads back into lincompile as the
    same graph. ``inline`` is the former name of ``portable`` (deprecated).
    ``external_data`` keeps the tensors in ``<file name>.data`` beside the model (default:
    only when they pass :data:`EXTERNAL_DATA_BYTES`). Every file is written under a
    temporary name and renamed into place, so an interrupted save leaves no half-written
    model.
    """
    if inline is not None:
        warnings.warn("save_onnx(inline=...) is deprecated; use portable=...",
                      DeprecationWarning, stacklevel=2)
        portable = portable or inline
    model = to_onnx(graph, portable=portable)
    check(model)
    path = Path(path)
    if external_data is None:
        external_data = sum(len(t.raw_data) for t in model.graph.initializer) \
            > EXTERNAL_DATA_BYTES
    data = f"{path.name}.data"

    def write(tmp: Path) -> list[str]:
        if not external_data:
            onnx.save_model(model, tmp / path.name)
            return [path.name]
        onnx.save_model(model, tmp / path.name, save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data, size_threshold=0)
        # the data first, so that a model never names missing data (none without tensors)
        return [n for n in (data, path.name) if (tmp / n).exists()]

    write_atomically(path.parent, write)
    return path


def check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises several types; keep one line
        raise CompileError(f"exported model '{model.graph.name}' fails onnx.checker: "
                           f"{str(e).splitlines()[0]}") from None


class OnnxExecutable(Executable):
    """The graph exported to ONNX and run by onnxruntime's CPUExecutionProvider."""

    target = "onnx"

    def __init__(self, graph: Graph, providers: list[str] | None = None):
        super().__init__(graph)
        import onnxruntime as ort

        self.model = to_onnx(graph)
        check(self.model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 2  # warnings stay visible: our graphs must cause none
        try:
            self.session = ort.InferenceSession(self.model.SerializeToString(), opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise CompileError(f"onnxruntime rejected graph '{graph.name}': "
                               f"{str(e).splitlines()[0]}") from None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if any(0 in np.shape(v) for v in feeds.values()):
            for n in self.graph.nodes:
                if n.op == "softmax_cross_entropy":   # it fails inside onnxruntime
                    raise FeedError(f"node '{n.name}' (softmax_cross_entropy): onnxruntime's "
                                    "SoftmaxCrossEntropyLoss cannot take an empty batch; the "
                                    "other targets give NaN (the mean of nothing)")
        try:
            outs = self.session.run(self.output_names, feeds)
        except Exception as e:
            raise LincompileError(f"onnxruntime failed on graph '{self.graph.name}': "
                                  f"{str(e).splitlines()[0]}") from None
        return dict(zip(self.output_names, outs))


def compile(graph: Graph, providers: list[str] | None = None) -> OnnxExecutable:
    return OnnxExecutable(graph, providers)
