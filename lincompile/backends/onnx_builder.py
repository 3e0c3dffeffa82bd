"""A small builder behind every ONNX lowering: one call per ONNX node.

An IR op lowers to one standard ONNX op where one has the same meaning, and otherwise to a
call of a model-local function ``lincompile.<Name>`` whose body is standard ops only;
onnxruntime inlines such functions, and the importer maps them back to the IR op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 18
DOMAIN = "lincompile"


def _np_to_proto(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, order="C"), name)


class FunctionBuilder:
    """Builds the body of one local function; names are local to the function."""

    def __init__(self, name: str, n_inputs: int, n_outputs: int):
        self.name = name
        self.inputs = [f"in{i}" for i in range(n_inputs)]
        self.outputs = [f"out{i}" for i in range(n_outputs)]
        self.nodes: list[onnx.NodeProto] = []
        self.attributes: list[str] = []

    def node(self, op_type: str, ins: Sequence[str], outs: Sequence[str], **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, list(ins), list(outs), **attrs))
        return outs[0]

    def const(self, value: np.ndarray, name: str) -> str:
        return self.node("Constant", [], [name], value=_np_to_proto(value, name))

    def attr(self, name: str, like: str) -> str:
        """The float attribute ``name`` of the call, as a tensor of ``like``'s dtype."""
        if name not in self.attributes:
            self.attributes.append(name)
        ref = onnx.AttributeProto(name="value_float", ref_attr_name=name,
                                  type=onnx.AttributeProto.FLOAT)
        node = helper.make_node("Constant", [], [f"{name}_f32"])
        node.attribute.append(ref)
        self.nodes.append(node)
        return self.node("CastLike", [f"{name}_f32", like], [name])

    def build(self) -> onnx.FunctionProto:
        return helper.make_function(
            DOMAIN, self.name, self.inputs, self.outputs, self.nodes,
            [helper.make_opsetid("", OPSET)], attributes=self.attributes)


class OnnxBuilder:
    """Collects the nodes, initializers and functions of one exported model."""

    def __init__(self, shapes: dict[str, tuple]):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.functions: dict[str, onnx.FunctionProto] = {}
        self.shapes = shapes
        self.prefix = ""
        self._tensors: set[str] = set(shapes)
        self._nodes: set[str] = set()

    @staticmethod
    def _unique(name: str, taken: set[str]) -> str:
        base, i = name, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def tmp(self, suffix: str) -> str:
        """A fresh intermediate tensor name under the current IR node."""
        return self._unique(f"{self.prefix}.{suffix}", self._tensors)

    def shape_of(self, name: str) -> tuple:
        return self.shapes[name]

    def node(self, op_type: str, ins: Sequence[str], outs: Sequence[str], **attrs: Any) -> str:
        name = self._unique(self.prefix, self._nodes)
        self.nodes.append(helper.make_node(op_type, list(ins), list(outs), name=name, **attrs))
        return outs[0]

    def const(self, value: np.ndarray, suffix: str) -> str:
        name = self.tmp(suffix)
        self.initializers.append(_np_to_proto(value, name))
        return name

    def call(self, fn: str, ins: Sequence[str], outs: Sequence[str],
             body: Callable[[FunctionBuilder], None], **attrs: Any) -> str:
        """Call local function ``lincompile.fn``, building its body once per model."""
        if fn not in self.functions:
            f = FunctionBuilder(fn, len(ins), len(outs))
            body(f)
            self.functions[fn] = f.build()
        name = self._unique(self.prefix, self._nodes)
        self.nodes.append(helper.make_node(fn, list(ins), list(outs), name=name, domain=DOMAIN,
                                           **{k: float(v) for k, v in attrs.items()}))
        return outs[0]
