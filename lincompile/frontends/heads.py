"""Classifier heads: find the logits that a classifier's outputs are computed from.

A classifier's ONNX file often ends in a *head* that turns its logits into probabilities and
labels: torch's ``nn.Softmax``/``nn.LogSoftmax``, Keras's softmax activation, and
scikit-learn's (skl2onnx) ``Softmax`` (or, for two classes, ``Sigmoid`` and a ``Concat`` of
``[1 − p, p]``) followed by ``ArgMax``, ``ArrayFeatureExtractor``, ``ZipMap`` and ``Cast``
nodes that make a second ``label`` output. Cross-entropy trains the logits before the head, as
``torch.nn.CrossEntropyLoss`` does, so the importer takes only the part of the model that
computes the logits (:func:`cut`); the head stays in the file, untouched. scikit-learn's linear
classifiers end in an ``ai.onnx.ml`` ``LinearClassifier`` (its scores before ``post_transform``
are the logits) or, for ``SGDClassifier``, in an ``ArgMax`` of decision scores (kind
``scores``), and a two-class one in the scores ``[−z, z]`` (kind ``sigmoid``).

A regressor's output that stacks the rows of a wider tensor into one column (skl2onnx ends
an ``MLPRegressor`` in ``Reshape [-1, 1]`` whatever its number of outputs) merges the batch
with the other dims, which has no symbolic shape: the tensor before that ``Reshape`` is what
is fitted (kind ``none``, the targets one row per example), the ``Reshape`` stays in the
file.

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
import math
from dataclasses import asdict, dataclass

import onnx
from onnx import helper, numpy_helper

from ..errors import LincompileError
from .onnx_ml import DOMAIN as ML
from .onnx_ml import classifier_form, logits_name

#: The node turning logits into probabilities, and what lincompile calls that head.
PROBABILITIES = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}
#: Ops that may follow the probabilities on the way to an output: labels, maps and copies.
TAIL = {"ArgMax", "ArrayFeatureExtractor", "ZipMap", "Cast", "Reshape", "Identity", "Flatten",
        "Squeeze", "Unsqueeze", "Normalizer"}
#: Ops between the logits and the probabilities that change no value (a float→float Cast).
COPIES = {"Identity", "Cast"}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


@dataclass
class Head:
    """What :func:`find_head` found: the logits tensor and the nodes after it.

    ``kind``: ``softmax``, ``log_softmax``, ``sigmoid`` (two classes from one logit column
    ``z``: the probabilities are ``[1 − σ(z), σ(z)]``, or the decision scores ``[−z, z]`` or
    ``z`` of a two-class linear model, whose ``z`` is trained as that logit), ``scores`` (the
    outputs are decision scores with labels by ArgMax, no probabilities: the scores are trained
    as softmax logits), or ``none`` (a tensor the user chose by name). ``nodes`` are the nodes
    left out (name, or op type where unnamed); ``outputs`` the model outputs they compute;
    ``classes`` the class labels a label output maps class indices to, where the head says
    (skl2onnx does).

    A ``LinearClassifier`` (``ai.onnx.ml``) is both the last Linear layer and the head: its
    logits are its scores before ``post_transform``, a tensor the file does not have, named
    ``<node>.logits``; its post-transform and labels are the head.
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
        self.proto = proto
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consts = {t.name: t for t in g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t
        self.outputs = [o.name for o in g.output]
        #: id of each LinearClassifier → the name of its scores before post_transform
        self.scores: dict[int, str] = {}
        taken = set(self.producer) | set(self.consts) | {i.name for i in g.input}
        for n in self.nodes:
            if n.op_type == "LinearClassifier" and n.domain == ML and len(n.output) == 2:
                self.scores[id(n)] = name = logits_name(n, taken)
                taken.add(name)
                self.producer[name] = n

    def op(self, name: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.domain in ("", "ai.onnx", "ai.onnx.ml") else None

    def data_input(self, node: onnx.NodeProto) -> str | None:
        """The one input of ``node`` that is not a constant, or None."""
        ins = [i for i in node.input if i and i not in self.consts]
        return ins[0] if len(ins) == 1 else None

    def back(self, name: str, ops: set[str], floats_only: bool = False) -> str:
        """Walk up from ``name`` through nodes of ``ops`` (``floats_only``: Casts to float)."""
        for n in self.walk(name, ops, floats_only):
            name = self.data_input(n)
        return name

    def walk(self, name: str, ops: set[str], floats_only: bool = False):
        """The nodes :meth:`back` passes, from ``name`` up."""
        while (n := self.op(name)) is not None and n.op_type in ops \
                and not (floats_only and _casts_to_int(n)):
            nxt = self.data_input(n)
            if nxt is None:
                break
            yield n
            name = nxt

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
    """``(logits, kind)`` if ``name`` is computed as class probabilities (or two-class
    decision scores) from logits."""
    n = m.op(name)
    if n is None:
        return None
    if n.op_type in PROBABILITIES and _last_axis(n):
        return m.back(n.input[0], COPIES, floats_only=True), PROBABILITIES[n.op_type]
    if id(n) in m.scores:   # a LinearClassifier's label or probabilities
        form = classifier_form(n)
        return m.scores[id(n)], "scores" if form.error else form.kind
    if n.op_type == "Concat" and len(n.input) == 2 and _last_axis(n):
        neg, pos = (m.back(i, {"Identity"}) for i in n.input)   # [1 − σ(z), σ(z)]
        sig, sub = m.op(pos), m.op(neg)
        if sig is not None and sig.op_type == "Sigmoid" and sub is not None \
                and sub.op_type == "Sub" and m.back(sub.input[1], {"Identity"}) == pos \
                and _is_scalar(m, sub.input[0], 1.0):
            return m.back(sig.input[0], COPIES, floats_only=True), "sigmoid"
        if sub is not None and _negates(m, sub, pos):   # [−z, z]: two-class decision scores
            return m.back(pos, COPIES, floats_only=True), "sigmoid"
    return None


def _negates(m: _Model, n: onnx.NodeProto, z: str) -> bool:
    """``n`` computes ``−z``: ``Neg(z)``, or ``Mul`` of ``z`` by the constant −1."""
    if n.op_type == "Neg":
        return m.back(n.input[0], {"Identity"}) == z
    if n.op_type == "Mul" and len(n.input) == 2:
        a, b = n.input
        return any(_is_scalar(m, c, -1.0) and m.back(v, {"Identity"}) == z
                   for c, v in ((a, b), (b, a)))
    return False


def _is_scalar(m: _Model, name: str, value: float) -> bool:
    t = m.consts.get(name)
    return t is not None and numpy_helper.to_array(t).size == 1 \
        and float(numpy_helper.to_array(t).reshape(-1)[0]) == value


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
    head = _classifier(m)
    return head if head is not None else _stacked_rows(m)


#: Reshape targets that stack every row of a batch into one column (or one vector).
STACKED = ([-1, 1], [-1])


def _stacked_rows(m: _Model) -> Head | None:
    """The one output made by ``Reshape`` to ``[-1, 1]`` or ``[-1]`` of a tensor with more
    than one value per row: that tensor, as what is fitted."""
    n = m.op(m.outputs[0]) if len(m.outputs) == 1 else None
    if n is None or n.op_type != "Reshape" or n.input[0] not in m.producer \
            or n.input[1] not in m.consts \
            or numpy_helper.to_array(m.consts[n.input[1]]).tolist() not in STACKED:
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(m.proto).graph
    except Exception:   # onnx raises several kinds: no shape, no head
        return None
    shape = next((v.type.tensor_type.shape for v in inferred.value_info
                  if v.name == n.input[0]), None)
    row = [d.dim_value if d.HasField("dim_value") else 0 for d in shape.dim[1:]] \
        if shape is not None else []
    if not row or 0 in row or math.prod(row) < 2:
        return None
    return _head(m, n.input[0], "none")


def _classifier(m: _Model) -> Head | None:
    found = set()
    for out in m.outputs:
        end = m.back(out, TAIL)
        probs = _probabilities(m, end)
        if probs is None and any(_labels(n) for n in m.walk(out, TAIL)):
            probs = end, "scores"   # labels by ArgMax of decision scores, no probabilities
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


def _labels(n: onnx.NodeProto) -> bool:
    """An ArgMax over the classes (the last axis of 2-D scores) making labels."""
    axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
    return n.op_type == "ArgMax" and axis in (-1, 1)


def _head(m: _Model, logits: str, kind: str) -> Head:
    keep = m.ancestors(logits)
    nodes = [n.name or n.op_type for n in m.nodes if id(n) not in keep]
    outputs = [o for o in m.outputs if o != logits]
    lc = m.producer.get(logits)
    if lc is not None and m.scores.get(id(lc)) == logits:   # a LinearClassifier's scores
        nodes.insert(0, f"{lc.name or lc.op_type} (its post_transform and labels)")
        ints = next((a.ints for a in lc.attribute if a.name == "classlabels_ints"), None)
        return Head(logits, kind, nodes, outputs, [int(c) for c in ints] if ints else None)
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
    for n in m.nodes:
        if id(n) in keep:
            g.node.append(n)
            if m.scores.get(id(n)) == head.logits:   # the scores, not the probabilities
                g.node[-1].output[1] = head.logits
    del g.output[:]
    g.output.append(vi)
    return out
