"""What every backend shares: the Executable interface and feed checking."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FeedError, ShapeError
from ..ir import Graph
from ..ops import get_op
from ..ops.base import fmt_shape

#: fill outputs with NaN (int64: its minimum) before each ``run``, so an output the
#: generated code never writes shows up: what ``validate`` and the tests do. Set from
#: ``LINCOMPILE_POISON=1``; ``run(feeds, poison=True)`` asks for it per call.
POISON = os.environ.get("LINCOMPILE_POISON", "") not in ("", "0")


class Executable:
    """A compiled graph: ``run(feeds) -> {output name: array}``, like onnxruntime's run."""

    target = "?"
    #: take float64 feeds for float32 inputs (a backend that computes in float64)
    wide_floats = False

    def __init__(self, graph: Graph):
        self.graph = graph
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        #: what check_feeds enforces beyond names, dtypes and shapes (computed once)
        self._rules = feed_rules(graph)

    def run(self, feeds: Mapping[str, Any], poison: bool | None = None
            ) -> dict[str, np.ndarray]:
        """The graph's outputs for ``feeds`` (input name -> array), checked first; every
        call returns arrays of its own.

        Safe to call from several threads at once, on every target: calls never share
        scratch memory (each thread has its own workspace) and give the same results as
        the same calls made one after another. ``poison`` (default :data:`POISON`): fill
        the outputs with NaN before computing them, so one the code forgets stays NaN
        (for validation; the targets that allocate outputs fresh ignore it)."""
        return self._run(check_feeds(self.graph, feeds, self._rules, self.wide_floats))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    #: the largest batch the compiled code can take (a ``c_kernels.BatchLimit``; None: any)
    _limit = None

    def batch(self, feeds: Mapping[str, Any]) -> int:
        """The batch size N of checked ``feeds`` (0 when the graph has no symbolic dim): a
        FeedError if the compiled code cannot take it."""
        for v in self.graph.inputs:
            for d, n in zip(v.shape, feeds[v.name].shape):
                if isinstance(d, str):
                    return self._limit.check(int(n)) if self._limit else int(n)
        return 0

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


@dataclass(frozen=True)
class FeedRules:
    """What a graph's ops require of its feeds beyond names, dtypes and shapes."""

    #: class-label inputs and their class count: every label in [0, classes)
    labels: dict[str, int] = field(default_factory=dict)
    #: "count" inputs (Adam's ``step``): every value in [0, 2^62)
    counts: frozenset[str] = frozenset()
    #: a training graph: its symbolic (batch) dims must not be 0
    training: bool = False


def feed_rules(graph: Graph) -> FeedRules:
    inputs = {v.name for v in graph.inputs}
    counts = {v.name for n in graph.nodes for i, v in enumerate(n.inputs)
              if v.name in inputs and get_op(n.op).domain(i) == "count"}
    return FeedRules(label_inputs(graph), frozenset(counts),
                     graph.meta.get("lincompile.role") == "training")


def _scalar(name: str, a: Any, dtype: str) -> np.ndarray:
    """A Python number fed to a scalar input, as that input's dtype, exactly or not at all."""
    if isinstance(a, bool):
        raise FeedError(f"feed '{name}' is {a}, expected a {dtype} number")
    if isinstance(a, float) and dtype == "int64":
        raise FeedError(f"feed '{name}' is the float {a!r}, expected an integer (int64)")
    try:
        return np.array(a, dtype=dtype)
    except OverflowError:
        raise FeedError(f"feed '{name}' is {a}, outside the range of {dtype}") from None


def check_feeds(graph: Graph, feeds: Mapping[str, Any],
                labels: FeedRules | Mapping[str, int] | None = None,
                wide_floats: bool = False) -> dict[str, np.ndarray]:
    """Check names, dtypes and shapes of ``feeds`` against the graph inputs; bind symbolic
    dims consistently; check what the ops require of the values (:class:`FeedRules`,
    computed from the graph when not given: class labels in range, counts in [0, 2^62), no empty
    batch in a training step). Returns C-contiguous arrays (copies only where needed).
    ``wide_floats`` also takes float64 arrays for float32 inputs, as they are."""
    if not isinstance(labels, FeedRules):
        rules = feed_rules(graph)
        if labels is not None:
            rules = FeedRules(dict(labels), rules.counts, rules.training)
    else:
        rules = labels
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
            a = _scalar(name, a, v.dtype)  # Python scalars take the input's dtype
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
                if n == 0 and rules.training:
                    raise FeedError(f"feed '{name}' has {d}=0: a training step needs at least "
                                    "one example (the mean loss of an empty batch is "
                                    "undefined); skip empty batches")
        check_values(name, a, rules)
        out[name] = np.asarray(a, order="C")
    if dims:   # the ops may tie a symbolic dim to a fixed one or to another
        try:
            graph.check_dims({d: n for d, (n, _) in dims.items()})
        except ShapeError as e:
            raise FeedError(f"feeds do not fit graph '{graph.name}': {e}") from None
    return out


def check_values(name: str, a: np.ndarray, rules: FeedRules) -> None:
    """What :func:`check_feeds` requires of a feed's values (not only of its dtype and
    shape): class labels in range, counts in [0, 2^62). Executables that skip the other checks for
    a feed signature they have already accepted still run this on every call."""
    if name in rules.labels and a.size and (a.min() < 0 or a.max() >= rules.labels[name]):
        raise FeedError(f"feed '{name}' holds class labels outside "
                        f"[0, {rules.labels[name]})")
    if name in rules.counts and a.size and not 0 <= a.min() <= a.max() < 2**62:
        bad = a.min() if a.min() < 0 else a.max()
        raise FeedError(f"feed '{name}' is a count (updates already made) and must lie in "
                        f"[0, 2^62), got {bad}")
