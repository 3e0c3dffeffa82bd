"""Classifier heads: find the logits that a classifier's outputs are computed from.

A classifier's ONNX file often ends in a *head* that turns its logits into probabilities and
labels: torch's ``nn.Softmax``/``nn.LogSoftmax``, Keras's softmax activation, and
scikit-learn's (skl2onnx) ``Softmax`` (or, for two classes, ``Sigmoid`` and a ``Concat`` of
``[1 − p, p]``) followed by ``ArgMax``, ``ArrayFeatureExtractor``, ``ZipMap`` and ``Cast``
nodes that make a second ``label`` output. Cross-entropy trains the logits before the head, as
``torch.nn.CrossEntropyLoss`` does, so the importer takes only the part of the model that
computes the logits (:func:`cut`); the head stays in the file, untouched.

>>> from onnx import helper, TensorProto
>>> vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3])
>>> nodes = [helper.make_node("Relu", ["x"], ["z"]), helper.make_node("Softmax", ["z"], ["p"])]
>>> m = helper.make_model(helper.make_graph(nodes, "m", [vi("x")], [vi("p")]))
>>> head = find_head(m)
>>> head.logits, head.kind, head.nodes, head.outputs
('z', 'softmax', ['Softmax'], ['p'])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import onnx
from onnx import helper, numpy_helper

from ..errors import LincompileError

#: The node turning logits into probabilities, and what lincompile calls that head.
PROBABILITIES = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}
#: Ops that may follow the probabilities on the way to an output: labels, maps and copies.
TAIL = {"ArgMax", "ArrayFeatureExtractor", "ZipMap", "Cast", "Reshape", "Identity", "Flatten",
        "Squeeze", "Unsqueeze"}
#: Ops between the logits and the probabilities that change no value (a float→float Cast).
COPIES = {"Identity", "Cast"}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


@dataclass
class Head:
    """What :func:`find_head` found: the logits tensor and the nodes after it.

    ``kind``: ``softmax``, ``log_softmax``, ``sigmoid`` (two classes from one logit column
    ``z``: the probabilities are ``[1 − σ(z), σ(z)]``), or ``none`` (a tensor the user chose
    by name). ``nodes`` are the nodes left out (name, or op type where unnamed); ``outputs``
    the model outputs they compute; ``classes`` the class labels a label output maps class
    indices to, where the head says (skl2onnx does).
    """

    logits: str
    kind: str
    nodes: list[str]
    outputs: list[str]
    classes: list[int] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Head:
        return Head(**json.loads(text))


class _Model:
    """Who produces and who reads each tensor of a model."""

    def __init__(self, proto: onnx.ModelProto):
        g = proto.graph
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consts = {t.name: t for t in g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t
        self.outputs = [o.name for o in g.output]

    def op(self, name: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.domain in ("", "ai.onnx", "ai.onnx.ml") else None

    def data_input(self, node: onnx.NodeProto) -> str | None:
        """The one input of ``node`` that is not a constant, or None."""
        ins = [i for i in node.input if i and i not in self.consts]
        return ins[0] if len(ins) == 1 else None

    def back(self, name: str, ops: set[str], floats_only: bool = False) -> str:
        """Walk up from ``name`` through nodes of ``ops`` (``floats_only``: Casts to float)."""
        while (n := self.op(name)) is not None and n.op_type in ops \
                and not (floats_only and _casts_to_int(n)):
            nxt = self.data_input(n)
            if nxt is None:
                break
            name = nxt
        return name

    def ancestors(self, name: str) -> set[int]:
        """ids of the nodes that ``name`` is computed from."""
        seen: set[int] = set()
        todo = [name]
        while todo:
            n = self.producer.get(todo.pop())
            if n is not None and id(n) not in seen:
                seen.add(id(n))
                todo.extend(i for i in n.input if i)
        return seen


def _casts_to_int(n: onnx.NodeProto) -> bool:
    return n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) not in FLOATS


def _last_axis(node: onnx.NodeProto) -> bool:
    """Softmax over the last axis (opset ≥ 13 default; axis 1 of the usual 2-D logits)."""
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
    return axis in (-1, 1)


def _probabilities(m: _Model, name: str) -> tuple[str, str] | None:
    """``(logits, kind)`` if ``name`` is computed as class probabilities from logits."""
    n = m.op(name)
    if n is None:
        return None
    if n.op_type in PROBABILITIES and _last_axis(n):
        return m.back(n.input[0], COPIES, floats_only=True), PROBABILITIES[n.op_type]
    if n.op_type == "Concat" and len(n.input) == 2 and _last_axis(n):
        neg, pos = (m.back(i, {"Identity"}) for i in n.input)   # [1 − σ(z), σ(z)]
        sig, sub = m.op(pos), m.op(neg)
        if sig is not None and sig.op_type == "Sigmoid" and sub is not None \
                and sub.op_type == "Sub" and m.back(sub.input[1], {"Identity"}) == pos \
                and _is_one(m, sub.input[0]):
            return m.back(sig.input[0], COPIES, floats_only=True), "sigmoid"
    return None


def _is_one(m: _Model, name: str) -> bool:
    t = m.consts.get(name)
    return t is not None and numpy_helper.to_array(t).size == 1 \
        and float(numpy_helper.to_array(t).reshape(-1)[0]) == 1.0


def _classes(m: _Model, keep: set[int]) -> list[int] | None:
    """The integer class labels of skl2onnx's ArrayFeatureExtractor/ZipMap, if any."""
    for n in m.nodes:
        if id(n) in keep:
            continue
        if n.op_type == "ArrayFeatureExtractor" and n.input[0] in m.consts:
            a = numpy_helper.to_array(m.consts[n.input[0]])
            if a.ndim == 1 and a.dtype.kind in "iu":
                return [int(c) for c in a]
        if n.op_type == "ZipMap":
            for a in n.attribute:
                if a.name == "classlabels_int64s":
                    return [int(c) for c in a.ints]
    return None


def find_head(proto: onnx.ModelProto, logits: str | None = None) -> Head | None:
    """The classifier head of ``proto``, or None if its outputs are not computed by one.

    With ``logits`` (a tensor name) the head is everything after that tensor.
    """
    m = _Model(proto)
    auto = _auto(m)
    if logits is None:
        return auto
    if logits not in m.producer:
        what = ("an input or a constant" if logits in m.consts or logits in
                {i.name for i in proto.graph.input} else "no tensor")
        raise LincompileError(f"logits '{logits}': {what} of the model; name a tensor a node "
                              f"computes (the model's outputs: {', '.join(m.outputs)})")
    kind = auto.kind if auto is not None and auto.logits == logits else "none"
    return _head(m, logits, kind)


def _auto(m: _Model) -> Head | None:
    found = set()
    for out in m.outputs:
        end = m.back(out, TAIL)
        probs = _probabilities(m, end)
        found.add(probs if probs is not None else (end, None))
    heads = {f for f in found if f[1] is not None}
    if len(heads) != 1:
        return None
    logits, kind = heads.pop()
    if logits not in m.producer:  # the head reads an input: nothing before it to train
        return None
    if any(end != logits for end, k in found if k is None):  # an output from elsewhere
        return None
    return _head(m, logits, kind)


def _head(m: _Model, logits: str, kind: str) -> Head:
    keep = m.ancestors(logits)
    nodes = [n.name or n.op_type for n in m.nodes if id(n) not in keep]
    outputs = [o for o in m.outputs if o != logits]
    return Head(logits, kind, nodes, outputs, _classes(m, keep))


def cut(proto: onnx.ModelProto, head: Head) -> onnx.ModelProto:
    """A copy of ``proto`` that computes ``head.logits`` only: the nodes it needs, that one
    output (the head's nodes and other outputs are left out)."""
    m = _Model(proto)
    keep = m.ancestors(head.logits)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    vi = onnx.ValueInfoProto(name=head.logits)
    for v in [*g.value_info, *g.output]:
        if v.name == head.logits:
            vi.CopyFrom(v)
    del g.node[:]
    g.node.extend(n for n in m.nodes if id(n) in keep)
    del g.output[:]
    g.output.append(vi)
    return out
