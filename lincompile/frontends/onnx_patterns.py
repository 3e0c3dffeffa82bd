"""Activations that exporters write as several ONNX nodes, imported as one IR op.

Before opset 20, torch exports ``nn.GELU`` as ``x · 0.5 · (1 + erf(x / √2))`` (Div, Erf,
Add, Mul, Mul), its tanh form with ``Pow`` or ``Mul`` for x³, and ``nn.SiLU`` as
``x · Sigmoid(x)``; each exporter orders and associates these a little differently. So
rather than match node layouts, a candidate is *evaluated*: the nodes around an Erf, Tanh,
Sigmoid or Abs that form a function of one tensor ``x`` through elementwise ops (same-dtype
Casts included, as Keras writes them) and scalar constants only (every inner value used
inside the candidate alone) are run on sample points in float64 and compared with gelu,
tanh-gelu, silu, mish (TorchScript's ``x · Tanh(Softplus(x))``) and softsign (``x / (1 +
|x|)``, both exporters). A match becomes one node of that op; anything else imports node by
node as before. torch's Softplus with a beta or threshold is matched by its layout instead
(:func:`softplus_pattern`), since its constants are the op's attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ..ops import get_op
from ..ops.activations import erf
from .onnx_import import DTYPES, Importer

#: ONNX elementwise ops a pattern may contain, as numpy functions.
ELEMENTWISE: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
    "Pow": np.power, "Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Tanh": np.tanh,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Erf": erf, "Abs": np.abs,
    "Softplus": lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))),
    "Cast": lambda x: x,   # to float or double only (see _elementwise)
}
ANCHORS = ("Erf", "Tanh", "Sigmoid", "Abs")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
MAX_NODES = 16
SAMPLES = np.array([-6.0, -2.5, -1.3, -0.7, -0.2, 0.0, 0.3, 0.9, 1.6, 3.1, 7.0])


def _reference(op: str, **attrs) -> np.ndarray:
    return get_op(op).reference(SAMPLES, **attrs)


#: What a candidate may turn out to be: (IR op, attributes).
TARGETS = (("gelu", {"approximate": "none"}), ("gelu", {"approximate": "tanh"}),
           ("silu", {}), ("mish", {}), ("softsign", {}))


@dataclass
class Fused:
    """One recognised pattern: emit ``op(x)`` where its last node was."""

    op: str
    x: str
    attrs: dict
    casts: tuple[str, ...] = ()   # the dtypes of the Casts inside (Keras writes same-dtype ones)

    def __call__(self, imp: Importer):
        x = imp.value(self.x)
        if any(c != x.dtype for c in self.casts):
            raise imp.unsupported(f"a Cast inside this {self.op} pattern changes the dtype of "
                                  f"'{x.name}' ({x.dtype}); only same-dtype Casts are imported")
        return imp.emit(self.op, [x], **self.attrs)


def _elementwise(node: onnx.NodeProto) -> bool:
    if node.op_type == "Cast" and not any(a.name == "to" and a.i in FLOAT_TYPES
                                          for a in node.attribute):
        return False
    return node.domain in ("", "ai.onnx") and node.op_type in ELEMENTWISE


class _Graph:
    """Producers, consumers and constants of the model being imported."""

    def __init__(self, imp: Importer):
        self.imp = imp
        self.producer = {o: n for n in imp.nodes for o in n.output}
        self.order = {id(n): i for i, n in enumerate(imp.nodes)}
        self.outputs = {o.name for o in imp.proto.graph.output}

    def scalar(self, name: str) -> float | None:
        c = self.imp.const(name)
        return float(c.data.reshape(-1)[0]) if c is not None and c.data.size == 1 else None

    def cone(self, y: str, x: str) -> list[onnx.NodeProto] | None:
        """The nodes computing ``y`` from ``x`` and scalar constants through elementwise
        ops (in graph order), or None if ``y`` needs anything else."""
        nodes: dict[int, onnx.NodeProto] = {}
        todo = [y]
        while todo:
            t = todo.pop()
            if t == x or self.scalar(t) is not None:
                continue
            n = self.producer.get(t)
            if n is None or not _elementwise(n) or t in self.imp.consts:
                return None
            if id(n) not in nodes:
                nodes[id(n)] = n
                if len(nodes) > MAX_NODES:
                    return None
                todo += list(n.input)
        return sorted(nodes.values(), key=lambda n: self.order[id(n)])

    def closed(self, cone: list[onnx.NodeProto], last: onnx.NodeProto) -> bool:
        """Every value made inside the cone but its result is read only inside it."""
        ids = {id(n) for n in cone}
        for n in cone:
            if n is last:
                continue
            for o in n.output:
                if o in self.outputs or any(id(c) not in ids for c in
                                            self.imp.consumers.get(o, [])):
                    return False
        return True

    def evaluate(self, cone: list[onnx.NodeProto], x: str) -> np.ndarray:
        env = {x: SAMPLES}
        with np.errstate(all="ignore"):
            for n in cone:
                args = [env[i] if i in env else self.scalar(i) for i in n.input]
                env[n.output[0]] = np.asarray(ELEMENTWISE[n.op_type](*args), np.float64)
        return env[cone[-1].output[0]]

    def leaves(self, anchor: onnx.NodeProto) -> list[str]:
        """Candidate inputs x of a pattern through ``anchor``: the non-constant tensors
        its input is computed from through elementwise ops, nearest first."""
        out, frontier = [], [anchor.input[0]]
        while frontier and len(out) < 8:
            t = frontier.pop(0)
            if t in out or self.scalar(t) is not None or t in self.imp.consts:
                continue
            out.append(t)
            n = self.producer.get(t)
            if n is not None and _elementwise(n):
                frontier += list(n.input)
        return out

    def next_node(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The one elementwise reader of ``node``'s output, if that is its only use."""
        out = node.output[0]
        users = self.imp.consumers.get(out, [])
        if out in self.outputs or len(users) != 1 or self.imp.uses[out] != 1:
            return None
        return users[0] if _elementwise(users[0]) else None


def _identify(values: np.ndarray) -> tuple[str, dict] | None:
    for op, attrs in TARGETS:
        if np.allclose(values, _reference(op, **attrs), rtol=1e-5, atol=1e-7):
            return op, attrs
    return None


def find_patterns(imp: Importer) -> dict[int, Fused]:
    """Recognise the multi-node activations of ``imp``'s model: their inner nodes are
    marked done, and the returned map (id of a pattern's last node → :class:`Fused`)
    says what to emit in place of that last node."""
    g = _Graph(imp)
    found: dict[int, Fused] = {}
    taken: set[int] = set()
    for node in imp.nodes:
        sp = softplus_pattern(g, node) if node.op_type == "Softplus" else None
        if sp is not None:
            nodes, x, beta, threshold = sp
            taken |= {id(n) for n in nodes}
            imp.done |= {id(n) for n in nodes[:-1]}
            found[id(nodes[-1])] = Fused("softplus", x, {"beta": beta, "threshold": threshold})
    for anchor in imp.nodes:
        if anchor.op_type not in ANCHORS or not _elementwise(anchor) or id(anchor) in taken:
            continue
        for x in g.leaves(anchor):
            match, last = None, anchor
            while last is not None and match is None:
                cone = g.cone(last.output[0], x)
                if cone and not taken & {id(n) for n in cone} and g.closed(cone, last):
                    match = _identify(g.evaluate(cone, x))
                    if match:
                        break
                last = g.next_node(last)
            if match:
                op, attrs = match
                taken |= {id(n) for n in cone}
                imp.done |= {id(n) for n in cone if n is not last}
                casts = tuple(DTYPES.get(a.i, "?") for n in cone if n.op_type == "Cast"
                              for a in n.attribute if a.name == "to")
                found[id(last)] = Fused(op, x, dict(attrs), casts)
                break
    return found


def softplus_pattern(g: _Graph, sp: onnx.NodeProto
                     ) -> tuple[list[onnx.NodeProto], str, float, float] | None:
    """torch's ``Softplus(beta, threshold)`` as its exporters write it around an ONNX
    Softplus: ``Softplus(x · β) / β`` (TorchScript, which drops the threshold: exactly
    softplus with no threshold), and dynamo's ``Where(x · β > t, x, that)``. Returns the
    nodes (the last one last), x, β and the threshold; None for anything else (a lone
    Softplus is ONNX's own, imported by itself)."""
    nodes, z, beta, x = [sp], sp.input[0], 1.0, sp.input[0]
    mul = g.producer.get(z)
    if mul is not None and mul.op_type == "Mul" and _elementwise(mul):
        k = [g.scalar(i) for i in mul.input]
        if (k[0] is None) != (k[1] is None):
            j = 0 if k[1] is not None else 1   # the input that is x
            beta, x = k[1 - j], mul.input[j]
            nodes.insert(0, mul)
    y = sp.output[0]
    if len(nodes) == 2:   # x · β: ... / β must follow
        div = g.next_node(sp)
        if div is None or div.op_type != "Div" or div.input[0] != y or \
                g.scalar(div.input[1]) != beta:
            return None
        nodes.append(div)
        y = div.output[0]
    threshold = float("inf")
    users = g.imp.consumers.get(y, [])
    where = users[0] if len(users) == 1 and y not in g.outputs else None
    if where is not None and where.op_type == "Where" and list(where.input[1:]) == [x, y]:
        gt = g.producer.get(where.input[0])
        if gt is not None and gt.op_type == "Greater" and gt.input[0] == z \
                and g.scalar(gt.input[1]) is not None:
            threshold = g.scalar(gt.input[1])
            nodes += [gt, where]
    if len(nodes) == 1 or not g.closed(sorted(nodes, key=lambda n: g.order[id(n)]), nodes[-1]):
        return None
    return nodes, x, _float32(beta), _float32(threshold)


def _float32(v: float) -> float:
    """The shortest decimal of a float32 constant (``inf`` stays ``inf``)."""
    return float(v) if np.isinf(v) else float(str(np.float32(v)))
