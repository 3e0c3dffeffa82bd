"""Kernel calls (the steps of :func:`c_kernels.lower`, same fusions) → CUDA: for each step,
the ``__global__`` kernels it needs and the host code that launches them.

Decisions made here, on top of the C backend's:

- elementwise steps (activations and their gradients, broadcasting add/mul, broadcast_to,
  mse_grad, sgd, adam/adamw) reuse the language-neutral bodies of ``templates/c/`` rendered
  with the CUDA row of the language table (one thread per element) inside a ``__global__``
  wrapper, ``k<step>_<op>``, whose parameters are the tensors the body touches; the
  row-wise bodies (softmax, log_softmax, layer_norm and their gradients) run one thread
  per row, a loop over the row in double as in C;
- the Linear products call the tiled GEMMs of ``templates/cuda/gemm.cu.j2`` (bias and
  activation fused in the epilogue as in C); the fused plain-SGD weight update accumulates
  ``−lr · dW`` into ``P.next`` with the learning rate read on the device;
- ``reduce_sum`` over leading dims (dBias) is ``lc_colsum``, over everything ``lc_sum``,
  anything else one thread per output summing in double; ``mse`` is a two-pass block
  reduction, softmax cross-entropy one block per row (max, then a sum of exps in double)
  and a final block mean. All fixed-order trees, no atomics: bit-identical run to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import CompileError
from ..ir import Graph, Value
from .c_kernels import (
    GEMMS,
    Context,
    CStep,
    Limit,
    _copy,
    _gemm,
    broadcast_strides,
    emit,
    gemm_limits,
    lower,
    product,
    row_count,
)
from .plan import Size
from .render import CTYPES, CUDA, render, wrap_args

#: Steps whose body is the shared C template, run one thread per element.
NEUTRAL = ("activation", "activation_grad", "binary", "broadcast_to", "mse_grad", "sgd", "adam")
NEUTRAL += ("adagrad", "onnx_momentum", "onnx_adam")   # the other optimizer updates
#: Row-wise neutral bodies (softmax, layer_norm and their gradients): one thread per row.
ROWS = ("softmax", "softmax_grad", "layer_norm", "layer_norm_grad")
NEUTRAL += ("pointwise", "pointwise_grad", *ROWS)
MAX_PARTS = 256        # partial sums of the two-pass mse (LC_MAX_PARTS)
COLSUM_CHUNKS = 64     # LC_COLSUM_MAX_CHUNKS of templates/cuda/reduce.cu.j2
SUM_PARTIALS = 1024    # LC_SUM_MAX_PARTIALS of templates/cuda/reduce.cu.j2
ACT_NAMES = {"0": "LC_ACT_NONE", "1": "LC_ACT_RELU", "2": "LC_ACT_SIGMOID", "3": "LC_ACT_TANH"}
MAX_GRID = 2**31 - 1   # blocks along x of one launch
#: Threads of a one-thread-per-element launch: MAX_GRID blocks of at least 32 threads (more
#: elements than any GPU's memory holds).
MAX_THREADS = MAX_GRID * 32


def reduce_mode(step: CStep) -> tuple[str, int]:
    """How a reduce_sum runs: ("sum", 0) over everything, ("colsum", k) over the leading
    k dims (a [rows, cols] column sum), or ("generic", 0)."""
    x = step.inputs[0]
    r = len(x.shape)
    axes = set(range(r)) if step.node.attrs["axes"] is None else {
        a % r for a in step.node.attrs["axes"]}
    if axes == set(range(r)):
        return "sum", 0
    if axes and axes == set(range(len(axes))):
        return "colsum", len(axes)
    return "generic", 0


def lower_cuda(graph: Graph) -> list[CStep]:
    """The C backend's kernel calls, with the scratch buffers the CUDA reductions need."""
    for v in graph.values.values():
        if v.dtype == "float64":
            raise CompileError(f"graph '{graph.name}': tensor '{v.name}' is float64; the CUDA "
                               "targets compute in float32 (use the 'c' or 'reference' target "
                               "for float64)")
    steps = lower(graph)
    for s in steps:
        s.scratch = []
        if s.kernel == "reduce_sum":
            mode, k = reduce_mode(s)
            if mode == "sum":
                s.scratch = [Size(4 * SUM_PARTIALS)]
            elif mode == "colsum":
                s.scratch = [Size.of_shape(s.inputs[0].shape[k:]) * Size(4 * COLSUM_CHUNKS)]
        elif s.kernel == "mse":
            s.scratch = [Size(8 * MAX_PARTS)]
        elif s.kernel == "softmax_cross_entropy":
            s.scratch = [Size.of_shape(s.inputs[0].shape[:1]) * Size(8)]
    return steps


def cuda_limits(steps: Sequence[CStep]) -> list[Limit]:
    """What the CUDA code of ``steps`` can index: the GEMMs' int dimensions, one thread per
    element (elementwise kernels, generic reductions), one block per row (cross-entropy)."""
    out = gemm_limits(steps)
    for s in steps:
        if s.kernel in NEUTRAL or (s.kernel == "reduce_sum" and reduce_mode(s)[0] == "generic"):
            y = s.outputs[0]
            out.append(Limit(y.name, Size.of_shape(y.shape), MAX_THREADS,
                             f"a kernel with one thread per element takes up to {MAX_THREADS}"))
        elif s.kernel in ("softmax_cross_entropy", "softmax_cross_entropy_grad"):
            z = s.inputs[-2]
            out.append(Limit(z.name, Size.of_shape(z.shape[:1]), MAX_GRID,
                             f"the cross-entropy kernels take up to {MAX_GRID} rows"))
    return out


@dataclass
class Emitted:
    """What one step becomes: kernel definitions (maybe none) and host statements."""

    kernels: list[str] = field(default_factory=list)
    host: str = ""


class CudaContext(Context):
    """The emission context, recording which tensors a kernel body names (its parameters)."""

    def __init__(self, ptr, scratch, bytecode_dir: str | None):
        self.used: dict[str, Value] = {}

        def record(v: Value) -> str:
            name = ptr(v)
            self.used.setdefault(name, v)
            return name

        super().__init__(CUDA, record, scratch, bytecode_dir)
        self.host_ptr = ptr


def _par(text: str) -> str:
    return text if text.isidentifier() or text.isdigit() else f"({text})"


def emit_cuda(name: str, step: CStep, ctx: CudaContext) -> Emitted:
    """The CUDA code of one step; ``name`` is the step's kernel name (``k<i>_<op>``)."""
    kernel = step.kernel
    if kernel in NEUTRAL:
        return _neutral(name, step, ctx)
    if kernel in ("linear", "matmul", "sgd_gemm"):
        return Emitted(host=_gemm_call(step, ctx))
    if kernel == "copy":
        return Emitted(host=render("cuda/copy.cu.j2", ctx.bytecode_dir, **_copy(step, ctx)))
    if kernel in SPECIAL:
        values = SPECIAL[kernel](name, step, ctx)
        tmpl = f"cuda/{kernel}.cu.j2"
        device = render(tmpl, ctx.bytecode_dir, part="device", **values).strip("\n")
        host = render(tmpl, ctx.bytecode_dir, part="host", **values).rstrip("\n")
        return Emitted([device] if device else [], host)
    raise CompileError(f"node '{step.node.name}': no CUDA kernel for op '{step.node.op}'")


def _neutral(name: str, step: CStep, ctx: CudaContext) -> Emitted:
    """A language-neutral template body in a ``__global__`` function of the tensors it uses."""
    ctx.used = {}
    body = emit(step, ctx)
    written = {ctx.host_ptr(v) for v in step.outputs}
    params = [f"{'' if p in written else 'const '}{CTYPES[v.dtype].c} *{p}"
              for p, v in ctx.used.items()]
    n = row_count(step) if step.kernel in ROWS else Size.of_shape(step.outputs[0].shape)
    device = render("cuda/kernel.cu.j2", ctx.bytecode_dir, comment=step.comment(), body=body,
                    signature=wrap_args(f"{name}(", ["size_t bn", *params])).rstrip("\n")
    host = render("cuda/launch.cu.j2", ctx.bytecode_dir, kname=name, n=n.c(),
                  guard=n.power > 0 or n.coef == 0, args=", ".join(["bn", *ctx.used]))
    return Emitted([device], host.rstrip("\n"))


def _gemm_call(step: CStep, ctx: CudaContext) -> str:
    d = _gemm(step, ctx)
    n, ta, tb = product(step)
    if step.grad is not None:
        return render("cuda/sgd_gemm.cu.j2", ctx.bytecode_dir, **d, ta=str(ta).lower(),
                      tb=str(tb).lower(), lr=ctx.ptr(step.node.inputs[-1])).rstrip("\n")
    gemm = "lc_gemm_" + GEMMS[ta, tb]
    epilogue = (ta, tb) == (False, True)
    if not epilogue and (d["bias"] != "NULL" or d["act"] != "0"):
        raise CompileError(f"node '{n.name}': bias/activation epilogue on a {gemm} product")
    d.update(gemm=gemm, act=ACT_NAMES[d["act"]], epilogue=epilogue,
             pad=" " * (len("LC_CHECK(") + len(gemm) + 1))
    return render("cuda/gemm_call.cu.j2", ctx.bytecode_dir, **d).rstrip("\n")


# ------------------------------------------------------------- CUDA-only templates
def _reduce_sum(name: str, step: CStep, ctx: CudaContext) -> dict:
    x, y = step.inputs[0], step.outputs[0]
    mode, k = reduce_mode(step)
    d = {"kname": name, "comment": step.comment(), "mode": mode, "x": ctx.ptr(x),
         "y": ctx.ptr(y), "T": CTYPES[y.dtype].c}
    if mode == "sum":
        return {**d, "n": Size.of_shape(x.shape).c(), "scratch": ctx.scratch(step, 0)}
    if mode == "colsum":
        return {**d, "rows": Size.of_shape(x.shape[:k]).c(),
                "cols": Size.of_shape(x.shape[k:]).c(), "scratch": ctx.scratch(step, 0)}
    # generic: thread o walks the reduced dims of its output element, in order
    r = len(x.shape)
    axes = {a % r for a in step.node.attrs["axes"]}
    strides = broadcast_strides(x.shape, x.shape)
    kept = [(Size.of_shape([d]), strides[i]) for i, d in enumerate(x.shape)
            if i not in axes and d != 1]
    red = [(Size.of_shape([d]), strides[i]) for i, d in enumerate(x.shape)
           if i in axes and d != 1]
    terms = []
    for j, (ext, st) in enumerate(kept):
        inner = Size(1)
        for e, _ in kept[j + 1:]:
            inner = inner * e
        idx = "o" if inner == Size(1) else f"o / {_par(inner.c())}"
        idx = idx if j == 0 else f"{idx} % {_par(ext.c())}"
        terms.append(idx if st == Size(1) else f"{_par(idx)} * {_par(st.c())}")
    loops, xi = "", []
    for j, (ext, st) in enumerate(red):
        loops += f"for (size_t r{j} = 0; r{j} < {ext.c()}; r{j}++)\n" + "    " * (j + 1)
        xi.append(f"r{j}" if st == Size(1) else f"r{j} * {_par(st.c())}")
    n_out = Size.of_shape(y.shape)
    return {**d, "n_out": n_out.c(), "base": " + ".join(terms) or "0", "loops": loops,
            "xi": " + ".join(xi) or "0", "n": n_out.c(), "guard": n_out.power > 0,
            "args": f"bn, {ctx.ptr(x)}, {ctx.ptr(y)}"}


def _mse(name: str, step: CStep, ctx: CudaContext) -> dict:
    p, t = step.inputs
    return {"kname": name, "comment": step.comment(), "T": CTYPES[p.dtype].c,
            "n": Size.of_shape(p.shape).c(), "p": ctx.ptr(p), "t": ctx.ptr(t),
            "y": ctx.ptr(step.outputs[0]), "scratch": ctx.scratch(step, 0)}


def row_block(cols: Size) -> int:
    """Threads of a one-block-per-row kernel: the smallest power of two ≥ the row length,
    between a warp and 256."""
    if cols.power:
        return 256
    b = 32
    while b < min(cols.coef, 256):
        b *= 2
    return b


def _sce(name: str, step: CStep, ctx: CudaContext) -> dict:
    *head, z, labels = step.inputs
    cols = Size.of_shape(z.shape[1:])
    ct = CTYPES[z.dtype]
    d = {"kname": name, "comment": step.comment(), "T": ct.c, "sfx": ct.sfx,
         "rows": Size.of_shape(z.shape[:1]).c(), "cols": cols.c(), "rb": row_block(cols),
         "z": ctx.ptr(z), "labels": ctx.ptr(labels)}
    if head:
        return {**d, "dl": ctx.ptr(head[0]), "dz": ctx.ptr(step.outputs[0])}
    return {**d, "y": ctx.ptr(step.outputs[0]), "scratch": ctx.scratch(step, 0)}


SPECIAL = {"reduce_sum": _reduce_sum, "mse": _mse, "softmax_cross_entropy": _sce,
           "softmax_cross_entropy_grad": _sce}
