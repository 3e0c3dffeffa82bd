"""What every backend shares: the Executable interface and feed checking (DESIGN §2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FeedError, ShapeError
from ..ir import Graph
from ..ops import get_op
from ..ops.base import fmt_shape


class Executable:
    """A compiled graph: ``run(feeds) -> {output name: array}``, like onnxruntime's run."""

    target = "?"
    #: take float64 feeds for float32 inputs (a backend that computes in float64)
    wide_floats = False

    def __init__(self, graph: Graph):
        self.graph = graph
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self._labels = label_inputs(graph)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._run(check_feeds(self.graph, feeds, self._labels, self.wide_floats))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.graph.name!r} target={self.target}>"


def label_inputs(graph: Graph) -> dict[str, int]:
    """Inputs used as class labels, with their class count (from the logits, which a
    "label" input always follows)."""
    out = {}
    for n in graph.nodes:
        op = get_op(n.op)
        for i, v in enumerate(n.inputs):
            if op.domain(i) == "label" and isinstance(n.inputs[i - 1].shape[-1], int):
                out[v.name] = n.inputs[i - 1].shape[-1]
    return out


def check_feeds(graph: Graph, feeds: Mapping[str, Any], labels: dict[str, int] | None = None,
                wide_floats: bool = False) -> dict[str, np.ndarray]:
    """Check names, dtypes and shapes of ``feeds`` against the graph inputs; bind symbolic
    dims consistently. Returns C-contiguous arrays (copies only where needed).
    ``wide_floats`` also takes float64 arrays for float32 inputs, as they are."""
    if not isinstance(feeds, Mapping):
        raise FeedError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    want = {v.name: v for v in graph.inputs}
    unknown = sorted(set(feeds) - set(want), key=repr)   # keys need not be str
    if unknown:
        raise FeedError(f"unknown feed(s) {unknown} for graph '{graph.name}'; its inputs are "
                        f"{list(want)}")
    missing = [n for n in want if n not in feeds]
    if missing:
        raise FeedError(f"missing feed(s) {missing} for graph '{graph.name}'; expected "
                        + ", ".join(f"{v!r}" for v in graph.inputs if v.name in missing))
    dims: dict[str, tuple[int, str]] = {}
    out = {}
    for name, v in want.items():
        a = feeds[name]
        if isinstance(a, (bool, int, float)) and v.shape == ():
            a = np.array(a, dtype=v.dtype)  # Python scalars take the input's dtype
        a = np.asarray(a)
        if str(a.dtype) != v.dtype and not (wide_floats and v.dtype == "float32"
                                            and a.dtype == np.float64):
            raise FeedError(f"feed '{name}' has dtype {a.dtype}, expected {v.dtype} "
                            f"(use .astype(np.{v.dtype}))")
        if a.ndim != len(v.shape):
            raise FeedError(f"feed '{name}' has shape {list(a.shape)}, expected "
                            f"{fmt_shape(v.shape)}")
        for d, n in zip(v.shape, a.shape):
            if isinstance(d, int) and d != n:
                raise FeedError(f"feed '{name}' has shape {list(a.shape)}, expected "
                                f"{fmt_shape(v.shape)}")
            if isinstance(d, str):
                seen = dims.setdefault(d, (n, name))
                if seen[0] != n:
                    raise FeedError(f"feed '{name}' has {d}={n} but feed '{seen[1]}' has "
                                    f"{d}={seen[0]}")
        if labels and name in labels and a.size and (a.min() < 0 or a.max() >= labels[name]):
            raise FeedError(f"feed '{name}' holds class labels outside [0, {labels[name]})")
        out[name] = np.asarray(a, order="C")
    if dims:   # the ops may tie a symbolic dim to a fixed one or to another
        try:
            graph.check_dims({d: n for d, (n, _) in dims.items()})
        except ShapeError as e:
            raise FeedError(f"feeds do not fit graph '{graph.name}': {e}") from None
    return out
