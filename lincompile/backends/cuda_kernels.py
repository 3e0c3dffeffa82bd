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
  and a final block mean. All fixed-order trees, no atomics: bit-identical run to run;
- precision tf32 / bf16: every product runs on tensor cores (``lc_mma_gemm`` of
  ``templates/cuda/gemm_mma.cu.j2``); in bf16 each float32 matrix a product reads gets one
  padded bf16 copy per step (:func:`bf16_operands`), written by the epilogue of the
  product that makes it where there is one;
- all optimizer updates of a step with the same settings run as one launch over a table of
  the tensors, and the bias-gradient column sums as another (:func:`fuse_launches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import CompileError
from ..ir import Graph, Value
from .c_kernels import (
    GEMMS,
    KERNELS,
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
from .precision import check_precision
from .render import CTYPES, CUDA, c_comment, render, wrap_args

#: Steps whose body is the shared C template, run one thread per element.
NEUTRAL = ("activation", "activation_grad", "binary", "broadcast_to", "mse_grad", "sgd", "adam")
NEUTRAL += ("adagrad", "onnx_momentum", "onnx_adam")   # the other optimizer updates
#: Row-wise neutral bodies (softmax, layer_norm and their gradients): one thread per row.
ROWS = ("softmax", "softmax_grad", "layer_norm", "layer_norm_grad")
NEUTRAL += ("pointwise", "pointwise_grad", *ROWS)
NEUTRAL += ("row_copy",)   # concat, slice_last: one thread per output element
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


def lower_cuda(graph: Graph, precision: str = "fp32") -> list[CStep]:
    """The C backend's kernel calls, with the scratch buffers the CUDA reductions need (and,
    in ``bf16``, the bf16 operand copies of the products: :func:`bf16_operands`)."""
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
    if check_precision(precision) == "bf16":
        steps = bf16_operands(steps)
    return fuse_launches(steps)


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

    def __init__(self, ptr, scratch, bytecode_dir: str | None, precision: str = "fp32"):
        self.used: dict[str, Value] = {}
        self.precision = precision

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
    if isinstance(step, FusedStep):
        return _fused(name, step, ctx)
    if kernel in NEUTRAL:
        return _neutral(name, step, ctx)
    if kernel == "cast_bf16":
        return Emitted(host=_mma_cast(step, ctx))
    if kernel in GEMM_KERNELS:
        return Emitted(host=_gemm_call(step, ctx) if ctx.precision == "fp32" else
                       _mma_call(step, ctx))
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


# ------------------------------------------------------------------ precisions
GEMM_KERNELS = ("linear", "matmul", "sgd_gemm")
MMA_PREC = {"tf32": "LC_PREC_TF32", "bf16": "LC_PREC_BF16"}


@dataclass(eq=False)
class CastStep(CStep):
    """The bf16 copy of a float32 matrix that bf16 products read (``inputs[0]`` → the
    ``outputs[0]`` stand-in, see :func:`bf16_copy`); ``node`` is its first reader."""

    @property
    def kernel(self) -> str:
        return "cast_bf16"

    def comment(self) -> str:
        return (f"bf16 copy of '{c_comment(self.inputs[0].name)}' for the products of node "
                f"'{c_comment(self.node.name)}' and later")


def padded(cols: int) -> int:
    """Row length of a bf16 copy: a multiple of 8 elements (16 bytes), for cp.async."""
    return -(-cols // 8) * 8


def bf16_copy(v: Value) -> Value:
    """The workspace tensor holding ``v`` [rows, cols] in bf16 with rows padded to
    :func:`padded` elements: declared as float32 [rows, padded/2] (the same bytes), so the
    buffer planner sizes it; the code reads it as ``__nv_bfloat16``."""
    rows, cols = v.shape
    return Value(f"{v.name}@bf16", "float32", (rows, padded(cols) // 2))


def bf16_operands(steps: list[CStep]) -> list[CStep]:
    """Give every product of ``steps`` bf16 operands, like ``torch.autocast``: one padded
    bf16 copy per float32 matrix, made once per step before its first product (weights too,
    so the float32 master weights stay as they are). A matrix that a Linear/matmul step
    writes gets its copy from that step's epilogue (no extra pass); others get a cast step,
    those of inputs and parameters all at the start (where they fuse into one launch).
    Each product records its operand copies as ``step.bf16`` (and reads them, for the
    planner); one whose matrices have a symbolic row length keeps tf32 operands."""
    made = {v.name: s for s in steps for v in s.outputs}
    copies: dict[str, Value] = {}
    out: list[CStep] = []
    head: list[CStep] = []   # copies of inputs and parameters (one fused launch, first)
    for s in steps:
        if s.kernel in GEMM_KERNELS:
            n = product(s)[0]
            ops = n.inputs[:2]
            if all(len(v.shape) == 2 and isinstance(v.shape[1], int) for v in ops):
                for v in ops:
                    if v.name not in copies:
                        copies[v.name] = c = bf16_copy(v)
                        p = made.get(v.name)
                        if (p is not None and p.kernel in ("linear", "matmul")
                                and p.outputs[0] is v and getattr(p, "cast_out", None) is None):
                            p.cast_out = c
                            p.outputs.append(c)
                        elif p is None:   # an input or parameter: copied first thing
                            head.append(CastStep(n, [v], [c]))
                        else:
                            out.append(CastStep(n, [v], [c]))
                s.bf16 = [copies[v.name] for v in ops]
                s.inputs = s.inputs + [c for c in s.bf16 if c not in s.inputs]
        out.append(s)
    return head + out


def _ll(d) -> str:
    return str(d) if isinstance(d, int) else "(long long)bn"


def _mma_call(step: CStep, ctx: CudaContext) -> str:
    """A product on tensor cores: lc_mma_gemm with fp32 (tf32) or bf16-copy operands."""
    n, ta, tb = product(step)
    a, b = n.inputs[0], n.inputs[1]
    bf = getattr(step, "bf16", None)
    prec = "bf16" if ctx.precision == "bf16" and bf else "tf32"
    d = _gemm(step, ctx)
    m, k = (a.shape[1], a.shape[0]) if ta else (a.shape[0], a.shape[1])
    cols = b.shape[0] if tb else b.shape[1]
    values = {"prec": MMA_PREC[prec], "precision": prec, "ta": str(ta).lower(),
              "tb": str(tb).lower(), "m": _ll(m), "n": _ll(cols), "k": _ll(k),
              "a": ctx.ptr(a), "lda": _ll(a.shape[1]), "b": ctx.ptr(b), "ldb": _ll(b.shape[1]),
              "c": d["c"], "ldc": _ll(cols)}
    if prec == "bf16":
        values.update(a=f"(const void *){ctx.ptr(bf[0])}", lda=str(padded(a.shape[1])),
                      b=f"(const void *){ctx.ptr(bf[1])}", ldb=str(padded(b.shape[1])))
    if step.grad is not None:
        values.update(kind="sgd", p=d["p"], bytes=d["bytes"], lr=ctx.ptr(step.node.inputs[-1]))
    else:
        cast = getattr(step, "cast_out", None)
        values.update(kind="gemm", bias=d["bias"], act=ACT_NAMES[d["act"]],
                      cb=f"(__nv_bfloat16 *){ctx.ptr(cast)}" if cast else "NULL",
                      ldcb=str(padded(cols)) if cast else "0")
    return render("cuda/mma_call.cu.j2", ctx.bytecode_dir, **values).rstrip("\n")


def _mma_cast(step: CStep, ctx: CudaContext) -> str:
    x, y = step.inputs[0], step.outputs[0]
    rows, cols = x.shape
    return render("cuda/mma_call.cu.j2", ctx.bytecode_dir, kind="cast", precision="bf16",
                  rows=_ll(rows), cols=str(cols), x=ctx.ptr(x), ldx=str(cols), y=ctx.ptr(y),
                  ldy=str(padded(cols))).rstrip("\n")


# ------------------------------------------------------------------ fused launches
#: Tensors per fused launch at most: the table is a kernel parameter (under 4 KiB).
FUSE_MAX = 24
#: Bias-gradient column sums fuse while the matrices they keep alive until the group's
#: launch add up to at most this many columns (floats per batch row).
FUSE_COLSUM_COLS = 16384


@dataclass(eq=False)
class FusedStep(CStep):
    """Steps of one kernel (``parts``) run as one launch over a table of their tensors; it
    reports the parts' kernel, and stands where the last of them stood."""

    parts: list[CStep] = field(default_factory=list)

    @property
    def kernel(self) -> str:
        return self.parts[0].kernel

    def comment(self) -> str:
        return f"{len(self.parts)} steps in one launch: " + "; ".join(
            p.comment() for p in self.parts)


def _update_key(s: CStep):
    if s.kernel not in ("sgd", "adam") or s.grad is not None or isinstance(s, FusedStep):
        return None
    n = s.node
    shared = tuple(v.name for v in n.inputs if v.name in ("lr", "step"))
    return ("update", n.op, tuple(sorted(n.attrs.items())), shared,
            tuple(v.dtype for v in s.inputs), tuple(v.dtype for v in s.outputs))


def _colsum_key(s: CStep):
    if s.kernel != "reduce_sum" or isinstance(s, FusedStep):
        return None
    mode, k = reduce_mode(s)
    x = s.inputs[0]
    if (mode, k, len(x.shape), x.dtype) != ("colsum", 1, 2, "float32") or not isinstance(
            x.shape[1], int):
        return None
    return ("colsum",)


def _cast_key(s: CStep):
    return ("cast",) if isinstance(s, CastStep) else None


def fuse_launches(steps: list[CStep]) -> list[CStep]:
    """One launch for all optimizer updates of a step (same optimizer settings), one for
    the bias-gradient column sums and one for the bf16 copies of inputs and parameters,
    each at the place of the last step it replaces.
    A step whose outputs another step reads before that place stays on its own."""
    for key in (_update_key, _colsum_key, _cast_key):
        groups: dict = {}
        for i, s in enumerate(steps):
            k = key(s)
            if k is not None:
                groups.setdefault(k, []).append(i)
        for idx in groups.values():
            if key is _cast_key:   # only the leading run (inputs and parameters)
                idx = [i for j, i in enumerate(idx) if i == j]
            idx = _movable(steps, idx)
            if key is _colsum_key:
                while idx and sum(steps[i].inputs[0].shape[1] for i in idx) > FUSE_COLSUM_COLS:
                    idx = _movable(steps, idx[1:])
            for c in range(0, len(idx) - 1, FUSE_MAX):
                chunk = idx[c:c + FUSE_MAX]
                if len(chunk) < 2:
                    continue
                parts = [steps[i] for i in chunk]
                ins = list({v.name: v for p in parts for v in p.inputs}.values())
                outs = [v for p in parts for v in p.outputs]
                fused = FusedStep(parts[0].node, ins, outs, parts=parts,
                                  elementwise=key is _update_key)
                for i in chunk:
                    steps[i] = None
                steps[chunk[-1]] = fused
        steps = [s for s in steps if s is not None]
    return steps


def _movable(steps: list[CStep], idx: list[int]) -> list[int]:
    """The members of ``idx`` (step positions) whose outputs no other step reads before the
    position of the last member (recomputed as members drop out)."""
    idx = list(idx)
    while len(idx) > 1:
        last = idx[-1]
        bad = [i for i in idx[:-1] if any(
            v.name in {o.name for o in steps[i].outputs}
            for j in range(i + 1, last + 1) if j not in idx for v in steps[j].inputs)]
        if not bad:
            break
        idx = [i for i in idx if i not in bad]
    return idx


def _fused(name: str, step: FusedStep, ctx: CudaContext) -> Emitted:
    parts, first = step.parts, step.parts[0]
    count = len(parts)
    if first.kernel == "cast_bf16":
        fill, fields = [], [f"const float *x[{count}]", f"float *y[{count}]",
                            f"long long cols[{count}]", f"long long ldy[{count}]",
                            f"long long end[{count}]"]
        for j, p in enumerate(parts):
            x, y = p.inputs[0], p.outputs[0]
            rows, cols = x.shape
            chunks = (Size.of_shape([rows]) * Size(padded(cols) // 8)).c()
            fill += [f"tab.x[{j}] = {ctx.host_ptr(x)};", f"tab.y[{j}] = {ctx.host_ptr(y)};",
                     f"tab.cols[{j}] = {cols};", f"tab.ldy[{j}] = {padded(cols)};",
                     f"tab.end[{j}] = (long long)({chunks})"
                     + ("" if j == 0 else f" + tab.end[{j - 1}]") + ";"]
        values = {"kname": name, "kind": "cast", "count": count, "fields": fields,
                  "fill": fill, "args": "tab", "comment": step.comment()}
    elif first.kernel == "reduce_sum":
        blocks = [-(-p.inputs[0].shape[1] // 32) for p in parts]
        starts = [sum(blocks[:j]) for j in range(count + 1)]
        fill = [f"tab.first[{j}] = {b};" for j, b in enumerate(starts)]
        for j, p in enumerate(parts):
            x = p.inputs[0]
            fill += [f"tab.x[{j}] = {ctx.host_ptr(x)};",
                     f"tab.y[{j}] = {ctx.host_ptr(p.outputs[0])};",
                     f"tab.rows[{j}] = (long long)({Size.of_shape(x.shape[:1]).c()});",
                     f"tab.cols[{j}] = {x.shape[1]};"]
        fields = [f"const float *x[{count}]", f"float *y[{count}]", f"long long rows[{count}]",
                  f"long long cols[{count}]", f"int first[{count + 1}]"]
        values = {"kname": name, "kind": "colsum", "count": count, "fields": fields,
                  "fill": fill, "blocks": starts[-1], "comment": step.comment()}
    else:
        shared = [r for r in range(len(first.inputs))
                  if all(p.inputs[r] is first.inputs[r] for p in parts)]
        names = {v.name: f"tab.o{r}[s]" for r, v in enumerate(first.outputs)}
        names.update({v.name: f"a{r}" if r in shared else f"tab.i{r}[s]"
                      for r, v in enumerate(first.inputs)})
        body_ctx = Context(CUDA, lambda v: names[v.name], ctx.scratch, ctx.bytecode_dir)
        d = KERNELS[first.kernel](first, body_ctx)
        d["index"] = "const size_t i = lc_i;"
        body = render(f"c/{first.kernel}.c.j2", ctx.bytecode_dir, **d).rstrip("\n")
        fields = [f"const {CTYPES[v.dtype].c} *i{r}[{count}]"
                  for r, v in enumerate(first.inputs) if r not in shared]
        fields += [f"{CTYPES[v.dtype].c} *o{r}[{count}]" for r, v in enumerate(first.outputs)]
        fields.append(f"size_t end[{count}]")
        fill, end = [], "0"
        for j, p in enumerate(parts):
            fill += [f"tab.i{r}[{j}] = {ctx.host_ptr(v)};" for r, v in enumerate(p.inputs)
                     if r not in shared]
            fill += [f"tab.o{r}[{j}] = {ctx.host_ptr(v)};" for r, v in enumerate(p.outputs)]
            end = Size.of_shape(p.outputs[0].shape).c() + ("" if j == 0 else
                                                            f" + tab.end[{j - 1}]")
            fill.append(f"tab.end[{j}] = {end};")
        params = [f"const struct {name}_tab tab"] + [
            f"const {CTYPES[first.inputs[r].dtype].c} *a{r}" for r in shared]
        args = ", ".join(["tab"] + [ctx.host_ptr(first.inputs[r]) for r in shared])
        values = {"kname": name, "kind": "update", "count": count, "fields": fields,
                  "fill": fill, "body": body, "args": args, "comment": step.comment(),
                  "signature": wrap_args(f"{name}(", params)}
    device = render("cuda/fused.cu.j2", ctx.bytecode_dir, part="device", **values)
    host = render("cuda/fused.cu.j2", ctx.bytecode_dir, part="host", **values)
    return Emitted([device.strip("\n")], host.rstrip("\n"))
