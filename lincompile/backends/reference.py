"""The numpy reference backend: every op's ``reference`` function, in float32 or float64."""

from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops import get_op
from .base import Executable


class ReferenceExecutable(Executable):
    """Runs the graph node by node in numpy; ``dtype=float64`` promotes every float."""

    target = "reference"

    def __init__(self, graph: Graph, dtype: str | None = None):
        super().__init__(graph)
        self.dtype = np.dtype(dtype) if dtype else None
        # a float64 training loop feeds its float64 outputs back as float32 inputs
        self.wide_floats = self.dtype == np.float64
        self.params = {k: self._cast(p.data) for k, p in graph.params.items()}

    def _cast(self, a: np.ndarray) -> np.ndarray:
        if self.dtype is not None and a.dtype.kind == "f":
            return a.astype(self.dtype)
        return a

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = {**self.params, **{k: self._cast(v) for k, v in feeds.items()}}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for n in self.graph.nodes:
                res = get_op(n.op).reference(*(env[v.name] for v in n.inputs), **n.attrs)
                res = res if isinstance(res, tuple) else (res,)
                for v, r in zip(n.outputs, res):
                    r = np.asarray(r)
                    env[v.name] = r.astype(self.dtype or v.dtype) if r.dtype.kind == "f" else r
        return {v.name: env[v.name] for v in self.graph.outputs}


def compile(graph: Graph, dtype: str | None = None) -> ReferenceExecutable:
    return ReferenceExecutable(graph, dtype)
