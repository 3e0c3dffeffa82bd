"""A small builder behind every ONNX lowering: one call per ONNX node.

An IR op lowers to one standard ONNX op where one has the same meaning, and otherwise to a
call of a model-local function ``lincompile.<Name>`` whose body is standard ops only;
onnxruntime inlines such functions, and the importer maps them back to the IR op.

In the *portable* form (``OnnxBuilder(portable=True)``) every such call is written out in
place instead: the function's body, with fresh tensor names under the IR node's name and the
call's attribute values substituted, so the model holds default-domain nodes only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 18
DOMAIN = "lincompile"
#: Metadata key of a portable file: ``[[ir_name, op, attrs, inputs, outputs, node names],
#: ...]`` for each IR op written out as several standard nodes, so it reads back as one op.
FUSED_KEY = "lincompile.fused"


def _np_to_proto(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, order="C"), name)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``… if taken; the result is added to ``taken``."""
    base, i = name, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


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
        """The float attribute ``name`` of the call, as a tensor of ``like``'s dtype
        (``name`` itself the first time, ``name_as_<like>`` for each further dtype)."""
        if name not in self.attributes:
            self.attributes.append(name)
            ref = onnx.AttributeProto(name="value_float", ref_attr_name=name,
                                      type=onnx.AttributeProto.FLOAT)
            node = helper.make_node("Constant", [], [f"{name}_f32"])
            node.attribute.append(ref)
            self.nodes.append(node)
            return self.node("CastLike", [f"{name}_f32", like], [name])
        return self.node("CastLike", [f"{name}_f32", like], [f"{name}_as_{like}"])

    def build(self) -> onnx.FunctionProto:
        return helper.make_function(
            DOMAIN, self.name, self.inputs, self.outputs, self.nodes,
            [helper.make_opsetid("", OPSET)], attributes=self.attributes)


class OnnxBuilder:
    """Collects the nodes, initializers and functions of one exported model."""

    def __init__(self, shapes: dict[str, tuple], portable: bool = False):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        #: the local functions built so far (the model's, unless ``portable``)
        self.functions: dict[str, onnx.FunctionProto] = {}
        self.shapes = shapes
        self.prefix = ""
        self.portable = portable
        #: set when a call was written out in place (portable): the importer must regroup
        self.inlined = False
        self._tensors: set[str] = set(shapes)
        self._nodes: set[str] = set()

    def tmp(self, suffix: str) -> str:
        """A fresh intermediate tensor name under the current IR node."""
        return unique_name(f"{self.prefix}.{suffix}", self._tensors)

    def shape_of(self, name: str) -> tuple:
        return self.shapes[name]

    def node(self, op_type: str, ins: Sequence[str], outs: Sequence[str], **attrs: Any) -> str:
        name = unique_name(self.prefix, self._nodes)
        self.nodes.append(helper.make_node(op_type, list(ins), list(outs), name=name, **attrs))
        return outs[0]

    def const(self, value: np.ndarray, suffix: str) -> str:
        name = self.tmp(suffix)
        self.initializers.append(_np_to_proto(value, name))
        return name

    def call(self, fn: str, ins: Sequence[str], outs: Sequence[str],
             body: Callable[[FunctionBuilder], None], **attrs: Any) -> str:
        """Call local function ``lincompile.fn``, building its body once per model; in the
        portable form, write the body out in place instead."""
        if fn not in self.functions:
            f = FunctionBuilder(fn, len(ins), len(outs))
            body(f)
            self.functions[fn] = f.build()
        if self.portable:
            self._inline(self.functions[fn], ins, outs, attrs)
            return outs[0]
        name = unique_name(self.prefix, self._nodes)
        self.nodes.append(helper.make_node(fn, list(ins), list(outs), name=name, domain=DOMAIN,
                                           **{k: float(v) for k, v in attrs.items()}))
        return outs[0]

    def _inline(self, f: onnx.FunctionProto, ins: Sequence[str], outs: Sequence[str],
                attrs: dict[str, Any]) -> None:
        """The body of ``f`` as nodes of the model: its inputs and outputs renamed to
        ``ins``/``outs``, its other tensors to fresh names under the current IR node, and
        each attribute reference replaced by the call's value."""
        names = {**dict(zip(f.input, ins)), **dict(zip(f.output, outs))}
        for n in f.node:
            node = onnx.NodeProto()
            node.CopyFrom(n)
            for o in n.output:
                names.setdefault(o, self.tmp(o))
            node.input[:] = [names[i] if i else "" for i in n.input]
            node.output[:] = [names[o] for o in n.output]
            node.name = unique_name(self.prefix, self._nodes)
            for a in node.attribute:
                if a.ref_attr_name:
                    a.CopyFrom(helper.make_attribute(a.name, float(attrs[a.ref_attr_name])))
            self.nodes.append(node)
        self.inlined = True
