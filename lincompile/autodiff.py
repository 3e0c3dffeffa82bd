"""Reverse-mode autodiff: the chain rule as a walk over the graph, backwards.

Each op's gradient rule (in ``lincompile/ops``) turns the gradient of its output into
the gradient of each input, as ordinary IR nodes; values used more than once get the sum
of their gradients. Only what ``of`` depends on, and what depends on ``wrt``, is computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import GradientError
from .ir import Graph, Value
from .ops import OPS, get_op


def grad(graph: Graph, of: str | Value, wrt: Sequence[str | Value] | None = None) -> Graph:
    """A copy of ``graph`` that also outputs ``W.grad`` for each ``W`` in ``wrt``.

    ``of`` must be a scalar; ``wrt`` defaults to the trainable parameters.

    >>> import lincompile as lc
    >>> g = lc.Graph("m"); x = g.input("x", ["N", 3]); t = g.input("t", ["N", 2])
    >>> _ = g.output(g.mse(g.linear(x, 2, name="fc"), t), name="loss")
    >>> [v.name for v in lc.grad(g, of="loss").outputs]
    ['loss', 'fc.weight.grad', 'fc.bias.grad']
    """
    g = graph.clone()
    names = [w if isinstance(w, str) else w.name for w in (wrt or g.trainable())]
    grads = append_grads(g, _lookup(g, of), [_lookup(g, w) for w in names])
    g.outputs += [grads[w] for w in names]
    return g


def _lookup(g: Graph, v: str | Value) -> Value:
    name = v if isinstance(v, str) else v.name
    if name not in g.values:
        raise GradientError(f"no tensor named '{name}' in graph '{g.name}'")
    return g.values[name]


def append_grads(g: Graph, of: Value, wrt: Sequence[Value]) -> dict[str, Value]:
    """Append the gradient nodes of scalar ``of`` w.r.t. ``wrt`` to ``g``; returns
    ``{w.name: value named 'w.grad'}``. A ``w`` that ``of`` does not depend on gets zeros."""
    if of.shape != ():
        raise GradientError(f"gradients are taken of a scalar; '{of.name}' has shape "
                            f"{list(of.shape)}")
    forward = list(g.nodes)
    # Values that depend on some wrt (forward sweep) and that `of` depends on (backward).
    live = {w.name for w in wrt}
    for n in forward:
        if any(v.name in live for v in n.inputs):
            live.update(v.name for v in n.outputs)
    needed = {of.name}
    for n in reversed(forward):
        if any(v.name in needed for v in n.outputs):
            needed.update(v.name for v in n.inputs)
    wants = live & needed

    seed = g.const(np.array(1, of.dtype), f"{of.name}.grad_seed")  # dLoss/dLoss = 1
    partials: dict[str, list[Value]] = {of.name: [seed]}
    named: set[str] = set()
    for n in reversed(forward):
        dy = _total(g, n.outputs[0], partials, named) if len(n.outputs) == 1 else None
        if dy is None:
            continue
        todo = [i for i, v in enumerate(n.inputs) if v.name in wants]
        if not todo:
            continue
        opdef = get_op(n.op)
        if opdef.grad is None:
            have = ", ".join(sorted(k for k, o in OPS.items() if o.grad is not None))
            raise GradientError(f"node '{n.name}': op '{n.op}' has no gradient rule; ops "
                                f"with one: {have}")
        for i in todo:
            rule = opdef.grad_rule(i)
            if rule is None:  # labels, shape-only inputs: no gradient flows
                continue
            d = rule(g, dy, *n.inputs, y=n.outputs[0], **n.attrs)
            partials.setdefault(n.inputs[i].name, []).append(d)

    out = {}
    for w in wrt:
        total = _total(g, w, partials, named)
        if total is None:  # `of` does not depend on w: its gradient is zero
            total = g.broadcast_to(g.const(np.zeros((1,) * len(w.shape), w.dtype)), w)
            g.rename(total, f"{w.name}.grad")
        out[w.name] = total
    return out


def _total(g: Graph, v: Value, partials: dict[str, list[Value]], named: set[str]
           ) -> Value | None:
    """The summed gradient of ``v``, named ``v.grad``; None if no gradient flows to ``v``.
    ``named`` holds the values that already are some tensor's gradient."""
    parts = partials.get(v.name)
    if not parts:
        return None
    total = parts[0]
    for p in parts[1:]:
        total = g.add(total, p)
    want = f"{v.name}.grad"
    if total.name != want and total.name not in g.params:  # the seed dLoss = 1 keeps its name
        if total.name not in named and want not in g.values:
            producer = next(n for n in reversed(g.nodes) if total in n.outputs)
            if producer.name == total.name and want not in {n.name for n in g.nodes}:
                producer.name = want  # the node computing v.grad is called v.grad too
            g.rename(total, want)
        else:  # already another tensor's gradient (a pass-through rule): name a copy
            total = g.apply("identity", [total], name=g.fresh(want), outputs=[g.fresh(want)])
    partials[v.name] = [total]
    named.add(total.name)
    return total
