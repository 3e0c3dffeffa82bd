"""The C backend: a graph → one standalone C99 file + header → ``cc`` → ctypes.

>>> import lincompile as lc, numpy as np
>>> g = lc.Graph("m"); x = g.input("x", ["N", 2]); _ = g.output(g.relu(x))
>>> lc.compile(g, "c").run({"x": np.array([[-1, 2]], np.float32)})["relu"]
array([[0., 2.]], dtype=float32)

The generated entry points (``<prefix>_forward`` for a model, ``<prefix>_train_step`` for
a training graph, and ``<prefix>_workspace_size``) are documented in the header they come
with; :func:`write_c_sources` writes that pair plus a Makefile for use outside Python.
"""

from __future__ import annotations

import ctypes
import operator
import os
import struct
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..arrays import aligned_copy, empty_aligned
from ..errors import CompileError, FeedError
from ..files import refuse_foreign, write_texts
from ..ir import Graph, Value
from . import base
from .base import Executable, check_feeds, check_values, label_inputs
from .build import build, bytecode_dir, cc_line, load_library
from .c_kernels import (
    BatchLimit,
    Context,
    CStep,
    bf16_copy_bound,
    emit,
    gemm_dims,
    gemm_limits,
    gemm_routine,
    lower,
)
from .c_tiles import TILES, gemm_tiles, target_isa
from .plan import Plan, Size, make_plan
from .precision import C_PRECISIONS, check_precision
from .render import CTYPES, C, c_array_bits, c_comment, c_ident, render, wrap_args

DEFAULT_CFLAGS = ("-O3", "-march=native", "-std=c99")
ACT_OPS = ("relu", "sigmoid", "tanh")
#: OpenMP threads a generated C library may use inside one call
MAX_THREADS = 1024
#: bytes of workspace above which a batch is refused (far beyond any memory; below 2^64, so
#: sizes computed from it in C's size_t cannot wrap)
MAX_WORKSPACE = 2**62
#: a C ``long``: the largest batch N that the entry points can be passed
LONG_MAX = 2**63 - 1
#: column pairs (32 columns each) of the bf16 kernels' L2-resident B panel (gemm_bf16.c.j2)
BF16_NCP = 8
#: what :meth:`_Call.fast` compares of each feed with the feeds it accepted last
_SIGNATURE = operator.attrgetter("shape", "dtype", "strides")


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), at most :data:`MAX_THREADS`."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def check_threads(threads: object) -> int:
    """``threads`` as an int in 1…:data:`MAX_THREADS`, else a CompileError."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not (
            1 <= threads <= MAX_THREADS):
        raise CompileError(f"threads must be an int from 1 to {MAX_THREADS}, got {threads!r}")
    return int(threads)


def max_batch(graph: Graph, sizes: Sequence[Size], extra: int = 0) -> int:
    """The largest batch N whose workspace (each of ``sizes`` in bytes rounded up to 64,
    plus ``extra``) stays within :data:`MAX_WORKSPACE`, computed exactly; a size that
    cannot fit at N = 1 is a CompileError (its C constant would not fit a size_t)."""
    align = lambda b: -(-b // 64) * 64
    total = lambda n: extra + sum(align(s.coef * n ** s.power) for s in sizes)
    big = [s for s in sizes if s.coef > MAX_WORKSPACE]
    if big or total(1) > MAX_WORKSPACE:
        what = f"{big[0].coef} bytes" if big else f"{total(1)} bytes at N = 1"
        raise CompileError(f"graph '{graph.name}' needs a workspace of {what}, more than "
                           f"2^62; make its tensors smaller")
    lo, hi = 1, LONG_MAX   # total(lo) fits; find the last n that does
    if total(hi) <= MAX_WORKSPACE:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= MAX_WORKSPACE else (lo, mid)
    return lo


def entry_name(graph: Graph) -> str:
    """``train_step`` for a training graph, ``forward`` otherwise."""
    return "train_step" if graph.meta.get("lincompile.role") == "training" else "forward"


def batch_symbol(graph: Graph) -> str | None:
    """The one symbolic dim of the graph (the batch), or None; more is a CompileError."""
    syms = {d for v in graph.values.values() for d in v.shape if isinstance(d, str)}
    if len(syms) > 1:
        raise CompileError(f"graph '{graph.name}' has symbolic dims {sorted(syms)}; the C "
                           "backend takes one (the batch size N)")
    return next(iter(syms), None)


def _dims(v: Value) -> str:
    return "[" + ", ".join("N" if isinstance(d, str) else str(d) for d in v.shape) + "]"


@dataclass
class Entry:
    """One generated entry point: its graph, kernel calls, buffer plan and C text."""

    name: str
    graph: Graph
    steps: list[CStep]
    plan: Plan
    params: list[str]          # parameter tensor names, by plan index
    text: dict                 # the template's view of it
    max_n: int = LONG_MAX      # the largest batch whose workspace size fits (max_batch)


class _Source:
    """Renders the .c/.h text of one or more graphs (entries) sharing constants."""

    #: the precisions of the Linear products this language's kernels take
    PRECISIONS = C_PRECISIONS

    def __init__(self, graphs: Mapping[str, Graph], prefix: str, cflags: Sequence[str],
                 threads: int, init: bool = False, precision: str = "fp32"):
        self.precision = check_precision(precision, self.PRECISIONS, "c")
        self.prefix = c_ident(prefix)
        self.cflags, self.threads = list(cflags), check_threads(threads)
        self._tiles: dict[str, int] | None = None
        self.bytecode = bytecode_dir()
        self.consts: dict[tuple, dict] = {}   # (dtype, bytes) -> template view of a param
        self.entries = [self._entry(c_ident(name, "entry name"), g, init)
                        for name, g in graphs.items()]

    # -------------------------------------------------------------------- one entry
    def _layout(self, graph: Graph, lower: Callable[[Graph], list[CStep]]
                ) -> tuple[list[CStep], list[str], Plan, list[str]]:
        """The kernel steps, the parameters they read, the buffer plan and the constants'
        generated names: what every language's entry point starts from."""
        graph.verify()
        batch_symbol(graph)
        steps = lower(graph)
        used = {v.name for s in steps for v in s.inputs} | {v.name for v in graph.outputs}
        params = [k for k in graph.params if k in used]
        plan = make_plan(graph.inputs, params, graph.outputs, steps)
        return steps, params, plan, [self._const(graph, k) for k in params]

    def _entry(self, name: str, graph: Graph, init: bool) -> Entry:
        steps, params, plan, pids = self._layout(graph, lambda g: lower(g, self.precision))
        names: dict[str, str] = {}
        decls: list[str] = []
        gemms = [s for s in steps if (gemm_routine(s) or "").startswith("lc_gemm")]
        if gemms:
            decls.append("float *pack = (float *)(ws + off[0]);")
        base = len(decls)   # slot k lives at off[base + k]

        def ptr(v: Value) -> str:
            st = plan.where[v.name]
            if st.kind == "in":
                return f"in{st.index}"
            if st.kind == "out":
                return f"out{st.index}"
            if st.kind == "param":
                return f"{pids[st.index]}.v"
            if v.name not in names:   # a slot: each tensor gets its own typed pointer
                names[v.name] = var = f"t{len(names)}"
                decls.append(f"{CTYPES[v.dtype].c} *{var} = ({CTYPES[v.dtype].c} *)"
                             f"(ws + off[{base + st.index}]);")
            return names[v.name]

        def scratch(step: CStep, i: int) -> str:
            k = plan.scratch[steps.index(step)][i]
            return f"(double *)(ws + off[{base + k}])"

        ctx = Context(C, ptr, scratch, self.bytecode)
        body = [{"comment": s.comment(), "code": emit(s, ctx)}
                for k, s in enumerate(steps) if k not in plan.views]
        # the GEMM pack area: LC_THREADS slices, each the most any product here needs (a
        # bf16 product needs its operands' copies too: lc_gemm_bf16_pack_floats)
        bf16 = any(s.precision == "bf16" for s in gemms)
        packs = sorted({("lc_gemm_bf16_pack_floats({}, {}, {}, LC_THREADS)" if s.precision
                         == "bf16" else "LC_THREADS * lc_gemm_pack_floats({}, {}, {})" if bf16
                         else "lc_gemm_pack_floats({}, {}, {})").format(*gemm_dims(s))
                        for s in gemms})
        pack = packs[0] if packs else ""
        for p in packs[1:]:
            pack = f"lc_gemm_max({pack}, {p})"
        layout = ([f"sizeof(float) * ({pack})" if bf16 else
                   f"sizeof(float) * LC_THREADS * {pack}"] if base else []) + [
            s.c() for s in plan.slots]
        text = self._text(name, graph, plan, ptr, init, layout=layout, decls=decls, steps=body,
                          argv=self._argv(name, graph))
        # at most this many pack bytes, whatever the product (gemm.c.j2's lc_gemm_pack_floats)
        t = self.tiles() if base else TILES
        k = t["kc"]
        most = 4 * self.threads * (-(-t["mc"] * k // 16) + -(-t["nc"] * k // 16)) * 16
        copies = [b for s in gemms if s.precision == "bf16" for b in bf16_copy_bound(s)]
        return Entry(name, graph, steps, plan, params, text,
                     max_batch(graph, [*plan.slots, *copies], most + 64 if base else 0))

    # the language's part of an entry point: its return type, its trailing arguments, and
    # how an output that is another tensor's value gets copied
    RETURNS = "void"
    TRAILING = ("void *workspace",)

    def _copy(self, dst: str, src: str, size: str) -> str:
        return f"memcpy({dst}, {src}, {size});"

    def _text(self, name: str, graph: Graph, plan: Plan, ptr: Callable[[Value], str],
              init: bool, **language: object) -> dict:
        """The template's view of one entry point: ``language`` (layout, declarations,
        kernel calls, ...) plus what every language has alike."""
        copies = []
        for j, tname in plan.copies:
            v = graph.values[tname]
            size = Size.of_shape(v.shape) * Size(CTYPES[v.dtype].itemsize)
            copies.append(f"{self._copy(f'out{j}', ptr(v), size.c())}   /* output "
                          f"'{c_comment(v.name)}' is '{c_comment(tname)}' */")
        kind = "training step" if name == "train_step" else "graph"
        return {**language, "name": name, "copies": copies,
                "signature": self._signature(name, graph),
                "what": f"{kind} '{c_comment(graph.name)}'", "doc": self._doc(graph, plan),
                "init": self._init(name, graph) if init else None}

    def _argv(self, name: str, graph: Graph) -> dict:
        """The one-array twin of entry ``name``: its call of the entry point, and what it
        returns: whether a loss that reads class labels came out NaN or infinite (a label
        out of range makes it NaN), so that a caller checks the labels only then;
        ``guarded``: whether every label input has such a loss (else the twin returns 0
        and a caller checks the labels before every call)."""
        nargs = len(graph.inputs) + len(graph.outputs) + len(self.TRAILING)
        call = wrap_args(f"{self.prefix}_{name}(", ["N", *(f"arg[{i}]" for i in range(nargs))])
        guards = _label_guards(graph, list(label_inputs(graph)))
        flag = [f"lc_nonfinite{CTYPES[v.dtype].itemsize * 8}(arg[{len(graph.inputs) + j}])"
                for j, v in enumerate(graph.outputs) if v.name in (guards or ())]
        return {"call": call, "flag": " || ".join(flag) or "0", "guarded": guards is not None}

    def _signature(self, name: str, graph: Graph) -> str:
        args = ["long N"]
        args += [f"const {CTYPES[v.dtype].c} *in{i}" for i, v in enumerate(graph.inputs)]
        args += [f"{CTYPES[v.dtype].c} *out{j}" for j, v in enumerate(graph.outputs)]
        return wrap_args(f"{self.RETURNS} {self.prefix}_{name}(", [*args, *self.TRAILING])

    def _doc(self, graph: Graph, plan: Plan) -> list[str]:
        sym = batch_symbol(graph)
        doc = [f"N: the batch size (dim '{c_comment(sym)}' of the model)." if sym else
               "N: unused (the graph has no batch dim)."]
        w = max(len(v.name) for v in graph.inputs + graph.outputs) + 2
        doc.append("Inputs:")
        doc += [f"  in{i:<3} {c_comment(v.name):<{w}} {v.dtype}{_dims(v)}"
                for i, v in enumerate(graph.inputs)]
        doc.append("Outputs:")
        doc += [f"  out{j:<2} {c_comment(v.name):<{w}} {v.dtype}{_dims(v)}"
                for j, v in enumerate(graph.outputs)]
        if plan.inplace:
            doc.append("In place: each of these outputs may be the same pointer as its input "
                       "(update state in place):")
            doc += [f"  out{j} = in{i}" for j, i in plan.inplace]
        return doc

    def _init(self, name: str, graph: Graph) -> dict | None:
        state = [(i, v) for i, v in enumerate(graph.inputs) if v.name in graph.initial_state]
        if not state:
            return None
        args = [f"{CTYPES[v.dtype].c} *in{i}" for i, v in state]
        lines = []
        for i, v in state:
            data = np.asarray(graph.initial_state[v.name], v.dtype)
            cid = self._const_data(data, f"initial value of '{v.name}'")
            lines.append(f"memcpy(in{i}, {cid}.v, {data.nbytes});   /* "
                         f"'{c_comment(v.name)}' */")
        return {"signature": wrap_args(f"void {self.prefix}_{name}_init(", args), "lines": lines,
                "doc": "pass the same pointers as in" + ", in".join(str(i) for i, _ in state)}

    # -------------------------------------------------------------------- constants
    def _const(self, graph: Graph, name: str) -> str:
        p = graph.params[name]
        kind = "constant" if p.const else "frozen parameter" if graph.meta.get(
            "lincompile.role") == "training" or not p.trainable else "parameter"
        return self._const_data(p.data, f"{kind} '{name}' {p.value.dtype}{_dims(p.value)}")

    def _const_data(self, data: np.ndarray, what: str) -> str:
        data = np.ascontiguousarray(data)
        key = (str(data.dtype), data.tobytes())
        if key not in self.consts:
            ct = CTYPES[str(data.dtype)]
            self.consts[key] = {"id": f"w{len(self.consts)}", "comment": c_comment(what),
                                "bits": ct.bits, "c": ct.c, "n": max(data.size, 1),
                                "data": c_array_bits(data)}
        return self.consts[key]["id"]

    # -------------------------------------------------------------------- files
    def tiles(self) -> dict[str, int]:
        """The GEMM tiles for these flags on this host (:func:`.c_tiles.gemm_tiles`)."""
        if self._tiles is None:
            self._tiles = gemm_tiles(self.cflags)
        return self._tiles

    def max_n(self) -> int | None:
        """The largest batch every entry's workspace fits (None: any ``long``): above it
        ``<prefix>_workspace_size`` returns SIZE_MAX instead of a wrapped size."""
        n = min(e.max_n for e in self.entries)
        return None if n >= LONG_MAX else n

    def files(self) -> dict[str, str]:
        routines = {gemm_routine(s) or "" for e in self.entries for s in e.steps}
        uses = lambda prefix: any(r.startswith(prefix) for r in routines)
        common = {"version": __version__, "prefix": self.prefix, "file": "model.c",
                  "header": "model.h", "threads": self.threads,
                  "cc_line": " ".join(cc_line(self.cflags)),
                  "what": " and ".join(e.text["what"] for e in self.entries),
                  "entries": [e.text for e in self.entries]}
        # with vectors, lc_small_nt runs on the GEMM core's dot-product blocks
        core = uses("lc_gemm") or (uses("lc_small") and target_isa(self.cflags) != "scalar")
        gemm = render("c/gemm.c.j2", self.bytecode, **self.tiles()) if core else ""
        bf16 = render("c/gemm_bf16.c.j2", self.bytecode, ncp=BF16_NCP) if uses(
            "lc_gemm_bf16") else ""
        common["bf16"] = bool(bf16)
        small = render("c/small_gemm.c.j2", self.bytecode) if uses("lc_small") else ""
        dgemm = render("c/dgemm.c.j2", self.bytecode) if uses("lc_dgemm") else ""
        c = render("c/model.c.j2", self.bytecode, **common, gemm=gemm.rstrip("\n"),
                   bf16_gemm=bf16.rstrip("\n"),
                   small=small.rstrip("\n"), dgemm=dgemm.rstrip("\n"),
                   params=list(self.consts.values()), max_n=self.max_n(),
                   max_layout=max(len(e.text["layout"]) for e in self.entries))
        h = render("c/model.h.j2", self.bytecode, **common,
                   guard=f"LC_{self.prefix.upper()}_H")
        return {"model.c": c, "model.h": h}


def write_c_sources(graphs: Mapping[str, Graph], outdir: str | Path, prefix: str = "model",
                    cflags: Sequence[str] | None = None, threads: int = 1,
                    init: bool = True, force: bool = False,
                    precision: str = "fp32") -> list[Path]:
    """Write ``model.c``, ``model.h`` and a ``Makefile`` for ``graphs`` (entry name ->
    graph, e.g. ``{"forward": model, "train_step": training_graph(model, ...)}``).
    Files of those names already in ``outdir`` are replaced only if lincompile wrote them
    (or with ``force``).

    When a training graph is among them, the other graphs read its trainable parameters
    as inputs (same names, after their own inputs) instead of baking them in, so a C
    program can evaluate the weights it trains. ``init`` adds ``<prefix>_<entry>_init``
    functions that fill a training step's state with its initial values. ``precision``:
    see :func:`compile`.
    """
    threads = check_threads(threads)
    cflags = list(DEFAULT_CFLAGS if cflags is None else cflags)
    if threads > 1 and "-fopenmp" not in cflags:
        cflags.append("-fopenmp")
    files = _Source(share_trained(graphs), prefix, cflags, threads, init, precision).files()
    files["Makefile"] = render("c/Makefile.j2", None, version=__version__, file="model.c",
                               header="model.h", lib="libmodel.so", obj="model.o",
                               cflags=" ".join(cflags))
    return write_files(files, outdir, force)


def share_trained(graphs: Mapping[str, Graph]) -> dict[str, Graph]:
    """``graphs`` with a training graph's trainable parameters (its inputs) turned into
    inputs of the other graphs too, so they evaluate the weights being trained; frozen
    parameters stay baked in."""
    trained = [v.name for t in graphs.values() if entry_name(t) == "train_step"
               for v in t.inputs]
    return {name: g if entry_name(g) == "train_step" else
            params_as_inputs(g, [p for p in trained if p in g.params])
            for name, g in graphs.items()}


def write_files(files: Mapping[str, str], outdir: str | Path, force: bool = False
                ) -> list[Path]:
    """Write each ``name -> text`` into ``outdir`` (made if needed); the paths written.

    A file already there is replaced only if lincompile generated it (its header line says
    so), or with ``force``; each file is written under a temporary name and renamed into
    place, so an interrupted run never leaves a half-written one.
    """
    refuse_foreign((Path(outdir) / name for name in files
                    if not _holds(Path(outdir) / name, files[name])), force)
    return write_texts(dict(files), outdir)


def _holds(path: Path, text: str) -> bool:
    """Whether ``path`` already holds exactly ``text`` (replacing it loses nothing)."""
    try:
        return isinstance(text, str) and path.is_file() \
            and path.stat().st_size == len(text.encode()) \
            and path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def params_as_inputs(graph: Graph, names: Sequence[str]) -> Graph:
    """A copy of ``graph`` whose parameters ``names`` are inputs (after the others)."""
    g = graph.clone()
    for n in names:
        if n in g.params and not g.params[n].const:
            g.inputs.append(g.params.pop(n).value)
    return g


# ------------------------------------------------------------------------ executable
class Workspaces:
    """Host workspaces, one per calling thread, so concurrent ``run`` calls never share
    scratch memory. Each is grown for a larger batch and otherwise reused: no allocation
    per call, and a thread's buffer goes away with the thread (or the executable)."""

    def __init__(self, size: Callable[[int], int], align: int, what: str):
        self._size, self._align, self._what = size, align, what
        self._local = threading.local()

    def address(self, n: int) -> int:
        """The ``align``-ed address of this thread's workspace, big enough for batch ``n``."""
        loc = self._local
        if getattr(loc, "n", None) == n:
            return loc.addr
        need = self._size(n) + self._align
        buf = getattr(loc, "buf", None)
        if buf is None or buf.size < need:
            loc.buf = buf = allocate(need, self._what, n)
        addr = buf.ctypes.data
        loc.n, loc.addr = n, addr + (-addr % self._align)
        return loc.addr


def allocate(nbytes: int, what: str, n: int) -> np.ndarray:
    """``nbytes`` of host memory for a workspace; out of memory is a FeedError."""
    try:
        return np.empty(nbytes, np.uint8)
    except MemoryError:
        raise FeedError(f"{what}: batch N={n} needs {nbytes / 2**30:.1f} GiB of workspace, "
                        "more than this machine can allocate; use a smaller batch") from None


def check_batch(n: int, max_n: int, what: str) -> None:
    """Refuse a batch whose workspace size would pass :data:`MAX_WORKSPACE`."""
    if n > max_n:
        raise FeedError(f"{what}: batch N={n} needs a workspace of more than 2^62 bytes "
                        f"(the most is N={max_n}); use a smaller batch")


class CExecutable(Executable):
    """A generated C library run through ctypes (one call per ``run``).

    Thread safety: ``run`` may be called from several threads at once; each thread has a
    workspace of its own (grown for a larger batch, never allocated per call), and the
    generated code keeps no global state (a bf16 library's one exception: whether the
    process may use AMX tiles, asked once and the same for every call). A :class:`Bound`
    has its own workspace too."""

    target = "c"
    precision = "fp32"   #: of the Linear products (set by compile)

    def __init__(self, graph: Graph, lib_path: Path, entry: Entry, prefix: str):
        super().__init__(graph)
        self.path, self.entry, self.plan = lib_path, entry, entry.plan
        self.lib = load_library(lib_path)
        self._prefix = prefix
        self._fn = getattr(self.lib, f"{prefix}_{entry.name}")
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_long] + [ctypes.c_void_p] * (
            len(graph.inputs) + len(graph.outputs) + 1)
        self._argv = getattr(self.lib, f"{prefix}_{entry.name}_argv")
        self._argv.restype, self._argv.argtypes = ctypes.c_int, [ctypes.c_long, ctypes.c_void_p]
        self._ws_size = self.lib[f"{prefix}_workspace_size"]
        self._ws_size.restype, self._ws_size.argtypes = ctypes.c_size_t, [ctypes.c_long]
        self._what = f"graph '{graph.name}' on target {self.target}"
        self._ws = Workspaces(self.workspace_size, 64, self._what)
        self._sym = batch_symbol(graph)
        self._limit = BatchLimit(gemm_limits(entry.steps), self.target)
        self._local = threading.local()   # .call: this thread's _Call (its last batch size)

    def source(self) -> str:
        """The generated C file."""
        return (self.path.parent / "model.c").read_text()

    @property
    def bf16_kernel(self) -> str | None:
        """What this process runs the bf16 products on: ``"amx"`` (AMX-BF16 tiles),
        ``"avx512-bf16"`` or ``"portable"`` (operands rounded to bf16, then the float32
        kernels); None when the library has no bf16 product."""
        fn = getattr(self.lib, f"{self._prefix}_bf16_kernel", None)
        if fn is None:
            return None
        fn.restype, fn.argtypes = ctypes.c_char_p, []
        return fn().decode()

    def workspace_size(self, n: int) -> int:
        """Bytes of workspace the entry point needs at batch ``n`` (a FeedError when that
        passes 2^62)."""
        check_batch(n, self.entry.max_n, self._what)
        return int(self._ws_size(n))

    def workspace(self, n: int) -> int:
        """The address of this thread's 64-byte aligned workspace for batch ``n``."""
        return self._ws.address(n)

    def run(self, feeds: Mapping[str, Any], poison: bool | None = None
            ) -> dict[str, np.ndarray]:
        """The outputs for ``feeds``, computed by one call of the generated entry point.

        Every feed is checked (names, dtypes, shapes, label ranges); once a thread has
        accepted feeds of some dtypes and shapes, later calls with the same ones skip the
        re-derivation and keep only the checks that depend on the values. Outputs are
        arrays of their own: a buffer handed out earlier is used again only once the caller
        holds no reference to it (else a new one is allocated), so no two results share
        memory. ``poison`` (default: :data:`.base.POISON`) fills them with NaN first."""
        if poison is None:
            poison = base.POISON
        call = getattr(self._local, "call", None)
        if call is not None and not poison:
            got = call.fast(feeds)
            if got is not None:
                return got
        checked = check_feeds(self.graph, feeds, self._rules, self.wide_floats)
        n = self.batch(checked)
        if call is None or call.n != n:
            call = self._local.call = _Call(self, n)
        call.accept(checked)
        return call.slow(checked, poison)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(feeds, poison=True)

    def bind(self, feeds: Mapping[str, np.ndarray], inplace: bool = True) -> Bound:
        """Buffers for repeated runs at one batch size: ``bound()`` is one ctypes call on
        precomputed pointers. With ``inplace`` each ``X.next`` output shares ``X``'s
        buffer (where the header allows it), so calling ``bound()`` again trains on.
        A binding has its own buffers and workspace: different bindings may be called
        from different threads at once (one binding from two threads at once would share
        its outputs)."""
        return Bound(self, feeds, inplace)


class _Call:
    """One thread's fast path of :meth:`CExecutable.run` at one batch size ``n``: the feed
    signature it last accepted (shapes, dtypes, strides), the workspace address, scalar
    feeds copied into buffers of its own, input addresses remembered per array object
    (weakly), output buffers used again once their caller has let go of them, and the
    pointer array of the entry point's one-argument twin (``<prefix>_<entry>_argv``)."""

    POOL = 3   # output buffers kept per output (a training loop holds the last one or two)

    def __init__(self, exe: CExecutable, n: int):
        g = exe.graph
        self.exe, self.n, self.fn = exe, n, exe._argv
        self.ws = exe.workspace(n)   # refuses a batch too large, before anything else
        self.names, self.out_names = exe.input_names, exe.output_names
        self.sig: list | None = None   # (shape, dtype, strides) of the feeds accepted at n
        self.addr: dict[int, tuple[weakref.ref, int]] = {}
        self.scalars = []   # (index, buffer, Python number types taken as they are, dtype)
        for i, v in enumerate(g.inputs):
            if v.shape == ():
                buf = np.zeros((), v.dtype)
                self._remember(buf)
                self.scalars.append((i, buf, (int,) if v.dtype == "int64" else (float, int),
                                     buf.dtype))
        rules = exe._rules
        self.labels = [(i, v.name) for i, v in enumerate(g.inputs) if v.name in rules.labels]
        self.counts = [(i, v.name) for i, v in enumerate(g.inputs) if v.name in rules.counts]
        self.guarded = exe.entry.text["argv"]["guarded"]   # (see _Source._argv)
        self.outputs = [(v.name, [], tuple(n if isinstance(d, str) else d for d in v.shape),
                         np.dtype(v.dtype)) for v in g.outputs]
        # the entry point's pointers, packed into one array for its _argv twin: one ctypes
        # argument instead of one per tensor
        nargs = len(g.inputs) + len(g.outputs) + 1
        self.pack = struct.Struct(f"{nargs}P").pack_into
        self.argv = (ctypes.c_void_p * nargs)()
        self.argv_address = ctypes.addressof(self.argv)

    def accept(self, checked: dict[str, np.ndarray]) -> None:
        """Remember the signature of feeds that passed every check."""
        self.sig = [_SIGNATURE(checked[k]) for k in self.names]

    def fast(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The outputs, if ``feeds`` have the signature accepted last (else None: take the
        checked path). Value checks run here as in :func:`.base.check_feeds`."""
        names = self.names
        if self.sig is None or len(feeds) != len(names):
            return None
        try:
            arrays = list(map(feeds.__getitem__, names))
            for i, buf, numbers, dt in self.scalars:   # numbers, 0-d arrays, numpy scalars
                a = arrays[i]
                if type(a) not in numbers and (a.dtype is not dt or a.shape != ()):
                    return None
                buf[()] = a
                arrays[i] = buf
            if list(map(_SIGNATURE, arrays)) != self.sig:
                return None
        except (KeyError, AttributeError, TypeError, ValueError, OverflowError):
            return None   # the checked path says what is wrong, if anything
        for i, name in self.counts:   # Adam's step: a scalar, cheap to look at each time
            check_values(name, arrays[i], self.exe._rules)
        if not self.guarded:
            self._check_labels(arrays)
        addr, ins = self.addr, []
        for a in arrays:
            hit = addr.get(id(a))
            if hit is None or hit[0]() is not a:
                hit = self._remember(a)
                if hit is None:
                    return None   # not aligned: the checked path copies it
            ins.append(hit[1])
        outs, nan_loss = self._call(ins, False)
        if nan_loss and self.guarded:   # a bad label makes its loss NaN: look only then
            self._check_labels(arrays)
        return outs

    def _check_labels(self, arrays: list[np.ndarray]) -> None:
        for i, name in self.labels:
            check_values(name, arrays[i], self.exe._rules)

    def slow(self, checked: dict[str, np.ndarray], poison: bool) -> dict[str, np.ndarray]:
        """The outputs for feeds that :func:`.base.check_feeds` has just returned."""
        arrays = [np.require(checked[k], requirements=["C", "A"]) for k in self.names]
        return self._call([a.ctypes.data for a in arrays], poison)[0]

    def _remember(self, a: np.ndarray) -> tuple[weakref.ref, int] | None:
        """``a`` (weakly) and its address, remembered while ``a`` lives; None if ``a`` is
        not aligned."""
        ptr = a.ctypes.data
        if ptr % a.dtype.alignment:
            return None
        if len(self.addr) > 64:
            self.addr.clear()
            for _, buf, _, _ in self.scalars:
                self._remember(buf)
        self.addr[id(a)] = hit = (weakref.ref(a), ptr)
        return hit

    def _call(self, ins: list[int], poison: bool) -> tuple[dict[str, np.ndarray], int]:
        """Call the entry point on input addresses ``ins`` (their arrays held by the
        caller): the outputs, and whether a loss reading class labels is not finite."""
        outs: dict[str, np.ndarray] = {}
        ptrs, (f0, f1), refs = [], _FREE or (-1, -1), sys.getrefcount
        for name, pool, shape, dt in self.outputs:
            if poison:
                a = np.full(shape, np.iinfo(np.int64).min if dt == np.int64 else np.nan, dt)
                outs[name] = a
                ptrs.append(a.ctypes.data)
                continue
            for entry in pool:   # a buffer nobody but the pool holds any more
                if refs(entry[0]) == f0 and refs(entry[2]) == f1:
                    break
            else:
                a = empty_aligned(shape, dt)
                entry = (a, a.ctypes.data, a.base)   # views of a hold a.base, not a
                if len(pool) < self.POOL and _FREE:
                    pool.append(entry)
            outs[name] = entry[0]
            ptrs.append(entry[1])
        self.pack(self.argv, 0, *ins, *ptrs, self.ws)
        return outs, self.fn(self.n, self.argv_address)


def _label_guards(graph: Graph, labels: list[str]) -> list[str] | None:
    """Outputs that are NaN whenever a class label in ``labels`` is out of range (the mean
    cross-entropy reading it; the generated code makes a bad label's loss NaN), or None
    if some label has no such output: then labels are checked before every call, not
    only when a loss comes back NaN."""
    outs = {v.name for v in graph.outputs}
    guard = {n.inputs[1].name: n.outputs[0].name for n in graph.nodes
             if n.op == "softmax_cross_entropy" and n.outputs[0].name in outs}
    if not labels or any(name not in guard for name in labels):
        return None
    return sorted({guard[name] for name in labels})


def _probe_refcount() -> tuple[int, int] | None:
    """What ``sys.getrefcount`` says, in :meth:`_Call._call`'s loop, of a pooled output
    and of the memory it views when only the pool entry holds them; None when this
    interpreter's counts cannot tell a held buffer from a free one (then no buffer is
    reused: every call allocates)."""
    if getattr(sys, "_is_gil_enabled", lambda: True)() is False:
        return None   # free-threaded: reference counts are deferred
    refs = sys.getrefcount
    a = empty_aligned((2,), np.float32)
    for entry in [(a, 0, a.base)]:
        del a
        free = refs(entry[0]), refs(entry[2])
        held, view = entry[0], entry[0][1:]   # the caller keeps the array, or a view of it
        ok = (refs(entry[0]), refs(entry[2])) == (free[0] + 1, free[1] + 1)
        del held, view
        return free if ok and (refs(entry[0]), refs(entry[2])) == free else None
    return None


_FREE = _probe_refcount()


class Bound:
    """Pre-bound buffers of a :class:`CExecutable` (see :meth:`CExecutable.bind`)."""

    def __init__(self, exe: CExecutable, feeds: Mapping[str, np.ndarray], inplace: bool):
        g = exe.graph
        feeds = check_feeds(g, feeds, exe._rules)
        self.n = n = exe.batch(feeds)
        self._ws = allocate(exe.workspace_size(n) + 64, exe._what, n)
        self.inputs = {v.name: aligned_copy(feeds[v.name]) for v in g.inputs}
        alias = dict(exe.plan.inplace) if inplace else {}
        self.outputs = {}
        for j, v in enumerate(g.outputs):
            if j in alias:
                self.outputs[v.name] = self.inputs[g.inputs[alias[j]].name]
            else:
                shape = tuple(n if isinstance(d, str) else d for d in v.shape)
                self.outputs[v.name] = out = empty_aligned(shape, v.dtype)
                out[...] = 0
        ptrs = [a.ctypes.data for a in self.inputs.values()]
        ptrs += [self.outputs[v.name].ctypes.data for v in g.outputs]
        ws = self._ws.ctypes.data
        self._call = exe._fn
        self._args = (n, *ptrs, ws + (-ws % 64))

    def __call__(self) -> None:
        self._call(*self._args)


def compile(graph: Graph, threads: int | None = None, cflags: Sequence[str] | None = None,
            prefix: str = "model", precision: str = "fp32") -> CExecutable:
    """Generate, build (or fetch from the cache) and load the C code of ``graph``.

    ``cflags`` replaces the default ``-O3 -march=native -std=c99``; ``threads`` (1 to 1024;
    default: the cores this process may run on, as onnxruntime does) above 1 adds
    ``-fopenmp`` and runs the GEMMs on that many threads (results identical to 1 thread).
    The executable may be called from several threads at once.

    ``precision`` of the float32 Linear products: ``fp32`` (default) or ``bf16``, mixed
    precision as ``torch.autocast(dtype=torch.bfloat16)``: operands rounded to bfloat16,
    float32 sums; weights, optimizer state, losses and reductions stay float32. It runs
    on AMX-BF16 or AVX512-BF16 where the build targets them (``-march=native`` on such a
    host), elsewhere on a portable path with the same numerics; ``exe.bf16_kernel`` says
    which.
    """
    threads = check_threads(default_threads() if threads is None else threads)
    flags = list(DEFAULT_CFLAGS if cflags is None else cflags)
    if threads > 1 and "-fopenmp" not in flags:
        flags.append("-fopenmp")
    src = _Source({entry_name(graph): graph}, prefix, flags, threads, precision=precision)
    lib = build(src.files(), flags)
    exe = CExecutable(graph, lib, src.entries[0], src.prefix)
    exe.precision = src.precision
    return exe
