"""Backends: each turns a Graph into an Executable with ``run(feeds) -> dict``."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import LincompileError
from ..ir import Graph
from .base import Executable

#: target name -> module whose ``compile(graph, **options)`` builds the Executable.
BACKENDS = {
    "reference": "lincompile.backends.reference",
    "onnx": "lincompile.backends.onnx",
    "c": "lincompile.backends.c",
    "cuda": "lincompile.backends.cuda",
    "cuda-cpu": "lincompile.backends.cuda_cpu",
}
TARGETS = tuple(BACKENDS)


def compile(graph: Graph, target: str = "reference", **options: Any) -> Executable:
    """Compile ``graph`` for ``target`` (one of :data:`TARGETS`).

    The executable's ``run`` may be called from several threads at once. The C and CUDA
    targets build through a verified on-disk cache (``$LINCOMPILE_CACHE``, see
    ``lincompile cache info``).

    >>> import lincompile as lc, numpy as np
    >>> g = lc.Graph("m"); x = g.input("x", ["N", 2]); _ = g.output(g.relu(x))
    >>> lc.compile(g, "onnx").run({"x": np.array([[-1, 2]], np.float32)})["relu"]
    array([[0., 2.]], dtype=float32)
    """
    if target not in BACKENDS:
        raise LincompileError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    return importlib.import_module(BACKENDS[target]).compile(graph, **options)
