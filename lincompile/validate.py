"""Validation: the same random feeds through several backends, against float64."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .backends import compile
from .backends.base import label_inputs
from .backends.reference import ReferenceExecutable
from .errors import FeedError, LincompileError, ValidationError
from .ir import Graph
from .ops import get_op

#: ‖out − ref‖ / ‖ref‖ for any float32 backend against the float64 reference.
REL_BOUND = 1e-5
#: Where the reference is all zeros, the bound on max |out|.
ABS_BOUND = 1e-6
#: The bound of the C and CUDA targets per precision of their Linear products (tf32 and
#: bf16 round the products' operands: within 2e-2 of float64 over a step).
PRECISION_BOUND = {"fp32": REL_BOUND, "tf32": 2e-2, "bf16": 2e-2}
#: Targets that take a ``precision`` (``c``: fp32 and bf16; the CUDA targets: tf32 too).
PRECISION_TARGETS = ("c", "cuda", "cuda-cpu")
#: The most memory random feeds plus their outputs may take (bytes, float64 for the
#: reference included): above it, :func:`random_feeds` refuses instead of being killed.
MAX_FEED_BYTES = 2 * 2**30


def feed_bytes(graph: Graph, batch: int) -> int:
    """Bytes of the graph's inputs and outputs at ``batch`` (each symbolic dim = ``batch``),
    floats counted at 8 bytes as the float64 reference holds them."""
    total = 0
    for v in [*graph.inputs, *graph.outputs]:
        n = math.prod(batch if isinstance(d, str) else d for d in v.shape)
        total += n * 8   # float32 becomes float64 in the reference; int64 is 8 already
    return total


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def random_feeds(graph: Graph, batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of the right shapes and dtypes: valid class labels for label inputs,
    v ≥ 0 for Adam's second moment, a small step count, a small positive learning rate.
    A FeedError when they and the outputs would take more than :data:`MAX_FEED_BYTES`."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
        raise FeedError(f"batch must be an int ≥ 0, got {batch!r}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise FeedError(f"seed must be ≥ 0, got {seed}")
    need = feed_bytes(graph, int(batch))
    if need > MAX_FEED_BYTES:
        raise FeedError(f"random feeds of batch {batch} for graph '{graph.name}' and their "
                        f"outputs would take {_gib(need)}, above the {_gib(MAX_FEED_BYTES)} "
                        "that validation allows; use a smaller batch")
    rng = np.random.default_rng(seed)
    labels = label_inputs(graph)
    domains = {}
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            domains.setdefault(v.name, get_op(n.op).domain(i))
    feeds = {}
    for v in graph.inputs:
        shape = [batch if isinstance(d, str) else d for d in v.shape]
        dom = domains.get(v.name)
        if v.name in labels:
            a = rng.integers(0, labels[v.name], shape)
        elif v.dtype == "int64":
            a = rng.integers(0, 10, shape)
        elif dom == "nonneg":
            a = np.abs(rng.standard_normal(shape)) * 0.1
        elif dom == "positive":
            a = rng.uniform(0.01, 0.1, shape)
        else:
            a = rng.standard_normal(shape)
        feeds[v.name] = np.asarray(a, v.dtype)
    return feeds


@dataclass
class Row:
    target: str
    output: str
    max_abs: float
    rel: float
    ok: bool
    note: str = ""


@dataclass
class Report:
    """Per-target, per-output errors against the float64 reference."""

    graph: str
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def __str__(self) -> str:
        w = max([len(r.output) for r in self.rows] + [6])
        lines = [f"{'target':<10} {'output':<{w}} {'max abs':>10} {'rel':>10}  result",
                 "-" * (w + 42)]
        for r in self.rows:
            verdict = "ok" if r.ok else f"FAIL {r.note}".rstrip()
            lines.append(f"{r.target:<10} {r.output:<{w}} {r.max_abs:>10.2e} {r.rel:>10.2e}  "
                         f"{verdict}")
        return "\n".join(lines)

    def raise_if_failed(self) -> Report:
        if not self.ok:
            bad = ", ".join(f"{r.target}:{r.output} ({r.note or 'rel ' + f'{r.rel:.1e}'})"
                            for r in self.failures())
            raise ValidationError(f"graph '{self.graph}' failed validation: {bad}")
        return self


def compare(target: str, name: str, out: np.ndarray | None, ref: np.ndarray,
            bound: float = REL_BOUND) -> Row:
    """One row of the report: the relative ``bound`` (ABS_BOUND where the reference is 0),
    NaN/Inf and missing outputs fail."""
    if out is None:
        return Row(target, name, np.inf, np.inf, False, "output not written")
    out = np.asarray(out)
    if out.shape != ref.shape:
        return Row(target, name, np.inf, np.inf, False,
                   f"shape {list(out.shape)}, expected {list(ref.shape)}")
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        return Row(target, name, np.nan, np.nan, False, "NaN or Inf in output")
    diff = out.astype(np.float64) - ref.astype(np.float64)
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(diff)) / norm if norm else max_abs
    if ref.dtype.kind in "iu":
        return Row(target, name, max_abs, rel, max_abs == 0, "" if max_abs == 0 else "differs")
    ok = rel <= bound if norm else max_abs <= ABS_BOUND
    return Row(target, name, max_abs, rel, ok, "" if ok else "above bound")


def validate(graph: Graph, targets: Sequence[str] = ("reference", "onnx"), batch: int = 4,
             seed: int = 0, feeds: Mapping[str, np.ndarray] | None = None,
             precision: str = "fp32") -> Report:
    """Run random (or given) feeds through each target and compare every output with the
    float64 reference. ``precision`` is that of the Linear products on the C and CUDA
    targets (``tf32``/``bf16`` are held to :data:`PRECISION_BOUND`; ``c`` takes ``fp32``
    and ``bf16``); the others compute in float32.

    This checks each backend's code against the reference, not the rules themselves: the
    reference is built from the same op declarations (shape, gradient and update rules),
    so a wrong rule gives the same wrong answer everywhere and passes. The rules are
    checked by the test suite, against central finite differences, PyTorch and a float64
    transcription of torch.optim's formulas.

    >>> import lincompile as lc
    >>> g = lc.Graph("m"); x = g.input("x", ["N", 3]); _ = g.output(g.linear(x, 2))
    >>> lc.validate(g, ["onnx"]).ok
    True
    """
    feeds = dict(feeds) if feeds is not None else random_feeds(graph, batch, seed)
    ref = ReferenceExecutable(graph, "float64").run(feeds)
    report = Report(graph.name)
    for t in targets:
        opts = {"precision": precision} if t in PRECISION_TARGETS else {}
        bound = PRECISION_BOUND.get(precision, REL_BOUND) if opts else REL_BOUND
        try:
            outs = compile(graph, t, **opts).run(feeds, poison=True)
        except LincompileError as e:
            report.rows.append(Row(t, "*", np.inf, np.inf, False, str(e)))
            continue
        for name, r in ref.items():
            report.rows.append(compare(t, name, outs.get(name), r, bound))
        for name in outs:
            if name not in ref:
                report.rows.append(Row(t, name, np.inf, np.inf, False, "unexpected output"))
    return report
