"""Activations that exporters write as several ONNX nodes, imported as one IR op.

Before opset 20, torch exports ``nn.GELU`` as ``x · 0.5 · (1 + erf(x / √2))`` (Div, Erf,
Add, Mul, Mul), its tanh form with ``Pow`` or ``Mul`` for x³, and ``nn.SiLU`` as
``x · Sigmoid(x)``; each exporter orders and associates these a little differently. So
rather than match node layouts, a candidate is *evaluated*: the nodes around an Erf, Tanh
or Sigmoid that form a function of one tensor ``x`` through elementwise ops and scalar
constants only (every inner value used inside the candidate alone) are run on sample
points in float64 and compared with gelu, tanh-gelu and silu. A match becomes one node
of that op; anything else imports node by node as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ..ops import get_op
from ..ops.activations import erf
from .onnx_import import Importer

#: ONNX elementwise ops a pattern may contain, as numpy functions.
ELEMENTWISE: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
    "Pow": np.power, "Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Tanh": np.tanh,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Erf": erf,
}
ANCHORS = ("Erf", "Tanh", "Sigmoid")
MAX_NODES = 16
SAMPLES = np.array([-6.0, -2.5, -1.3, -0.7, -0.2, 0.0, 0.3, 0.9, 1.6, 3.1, 7.0])


def _reference(op: str, **attrs) -> np.ndarray:
    return get_op(op).reference(SAMPLES, **attrs)


#: What a candidate may turn out to be: (IR op, attributes).
TARGETS = (("gelu", {"approximate": "none"}), ("gelu", {"approximate": "tanh"}),
           ("silu", {}))


@dataclass
class Fused:
    """One recognised pattern: emit ``op(x)`` where its last node was."""

    op: str
    x: str
    attrs: dict

    def __call__(self, imp: Importer):
        return imp.emit(self.op, [imp.value(self.x)], **self.attrs)


def _elementwise(node: onnx.NodeProto) -> bool:
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
                found[id(last)] = Fused(op, x, dict(attrs))
                break
    return found
