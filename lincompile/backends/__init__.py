"""Backends: each turns a Graph into an Executable with ``run(feeds) -> dict``."""

from __future__ import annotations

from typing import Any

from ..errors import LincompileError
from ..ir import Graph
from .base import Executable

TARGETS = ("reference", "onnx")


def compile(graph: Graph, target: str = "reference", **options: Any) -> Executable:
    """Compile ``graph`` for ``target`` (one of :data:`TARGETS`).

    >>> import lincompile as lc, numpy as np
    >>> g = lc.Graph("m"); x = g.input("x", ["N", 2]); _ = g.output(g.relu(x))
    >>> lc.compile(g, "onnx").run({"x": np.array([[-1, 2]], np.float32)})["relu"]
    array([[0., 2.]], dtype=float32)
    """
    if target == "reference":
        from .reference import compile as build
    elif target == "onnx":
        from .onnx import compile as build
    else:
        raise LincompileError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    return build(graph, **options)
