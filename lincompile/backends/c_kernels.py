"""IR nodes → kernel calls: the decisions (which kernel, what is fused, loop nests) and the
flat dict of finished C text that each ``templates/c/<kernel>.c.j2`` is rendered with.

Decisions made here:

- dead nodes (nothing an output needs) are dropped;
- a ``linear`` whose only reader is a relu/sigmoid/tanh, and whose output is not a graph
  output, runs the activation in the GEMM epilogue and never stores the pre-activation
  (activation gradients read the activation's *output*, so training graphs fuse too);
  the other activations (whose gradients read the input) run as kernels of their own;
- a ``[*, C]`` operand of a product is the matrix of its rows (leading dims flattened);
- ``flatten``/``reshape``/``identity`` are views (no code) unless they make a graph output;
- ``concat``/``slice_last`` copy contiguous runs of rows (one ``memcpy`` per run and row);
- a weight gradient ``dW = dYᵀ·X`` read only by a plain SGD update (no momentum, no decay)
  is accumulated straight into ``P.next`` by the GEMM (``beta = 1, alpha = −lr``, starting
  from ``P`` where ``P.next`` is another buffer), at the update's place in the schedule, so
  ``dW`` never goes to memory;
- outputs at most 16 columns wide (classifier heads) use a dot-product kernel instead of
  the 64-wide register tile;
- broadcasting loops are merged to the fewest dims with unit or zero strides, so the inner
  loop vectorizes; reductions accumulate in double in a scratch buffer;
- in precision ``bf16`` every float32 product calls ``lc_gemm_bf16_*``
  (``templates/c/gemm_bf16.c.j2``: bf16 operands, float32 sums, the same epilogues and
  fused SGD), classifier heads included;
- sizes and indices are ``size_t`` (products of dims pass 2^31 easily); only the GEMMs take
  single dims as C ``int``: a fixed one above :data:`MAX_GEMM_DIM` is a CompileError, a batch
  above it a FeedError at run time (:class:`BatchLimit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import CompileError, FeedError
from ..ir import Graph, Node, Value
from ..ops import get_op
from .plan import Size
from .render import CTYPES, Lang, c_comment, c_literal, render

ACTS = {"relu": 1, "sigmoid": 2, "tanh": 3}
VIEWS = ("flatten", "reshape", "identity")
OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "onnx_momentum", "onnx_adam")
#: GEMM routine per (trans_a, trans_b): nt is X·Wᵀ, nn is dY·W, tn is dYᵀ·X.
GEMMS = {(False, True): "nt", (False, False): "nn", (True, False): "tn", (True, True): "tt"}
SMALL_N = 16   # at most this many output columns: lc_small_nt rather than the tiled GEMM
#: The largest single dimension a GEMM takes (C and CUDA): M, N, K and the leading dims are
#: C ints, and the tile arithmetic adds at most one tile (< 2^16) to a dimension.
MAX_GEMM_DIM = 2**31 - 1 - 0xFFFF


@dataclass(eq=False)
class CStep:
    """One kernel call: an IR node, maybe with a fused activation."""

    node: Node
    inputs: list[Value]
    outputs: list[Value]
    act: Node | None = None
    grad: Node | None = None   # a matmul fused into this (sgd) step
    view: bool = False
    elementwise: bool = False
    scratch: list[Size] = field(default_factory=list)
    precision: str = "fp32"    # of the product a GEMM step computes (fp32 or bf16)

    @property
    def kernel(self) -> str:
        if self.grad is not None:
            return "sgd_gemm"
        kernel = get_op(self.node.op).kernel
        if kernel is None:
            raise CompileError(f"node '{self.node.name}': op '{self.node.op}' has no kernel")
        return kernel

    def comment(self) -> str:
        n = self.node
        outs = ", ".join(f"'{c_comment(v.name)}'" for v in self.outputs)
        text = f"node '{c_comment(n.name)}' ({n.op}) -> {outs}"
        if self.act is not None:
            text += f"; {self.act.op} '{c_comment(self.act.name)}' fused into the epilogue"
        if self.grad is not None:
            text += f"; gradient '{c_comment(self.grad.name)}' (matmul) fused in"
        return text


def lower(graph: Graph, precision: str = "fp32") -> list[CStep]:
    """The graph's nodes as kernel calls, in order (dead code dropped, fusions made);
    ``precision`` (fp32 or bf16) is that of the float32 products."""
    needed = {v.name for v in graph.outputs}
    for n in reversed(graph.nodes):
        if any(v.name in needed for v in n.outputs):
            needed.update(v.name for v in n.inputs)
    readers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    fused: set[int] = set()
    steps = []
    for n in graph.nodes:
        if id(n) in fused or not any(v.name in needed for v in n.outputs):
            continue
        get_op(n.op)  # unknown ops fail here, by name
        step = CStep(n, list(n.inputs), list(n.outputs))
        y = n.outputs[0]
        users = readers.get(y.name, [])
        if (n.op == "linear" and y.name not in outputs and len(users) == 1
                and users[0].op in ACTS and users[0].inputs[0] is y):
            step.act, step.outputs = users[0], list(users[0].outputs)
            fused.add(id(users[0]))
        step.view = n.op in VIEWS
        step.elementwise = n.op in OPTIMIZERS or (
            get_op(n.op).kernel in ("binary", "activation", "activation_grad", "pointwise",
                                     "pointwise_grad")
            and all(v.shape == y.shape for v in n.inputs))
        if n.op == "reduce_sum":
            step.scratch = [Size.of_shape(y.shape) * Size(8)]
        steps.append(step)
    steps = _fuse_sgd(steps, readers, outputs)
    for s in steps:
        if s.kernel in ("linear", "matmul", "sgd_gemm") and \
                product(s)[0].outputs[0].dtype == "float32":
            s.precision = precision
        for v, d in gemm_operand_dims(s):
            if d.power == 0 and d.coef > MAX_GEMM_DIM:
                raise CompileError(f"node '{product(s)[0].name}': tensor '{v.name}' has a "
                                   f"dimension of {d.coef}; matrix products take dimensions up to "
                                   f"{MAX_GEMM_DIM}")
    return steps


def _fuse_sgd(steps: list[CStep], readers: dict, outputs: set[str]) -> list[CStep]:
    """Fold ``dW = matmul(...)`` into the plain SGD update that is its only reader."""
    made = {v.name: s for s in steps for v in s.outputs}
    drop: set[int] = set()
    for s in steps:
        n = s.node
        if n.op != "sgd" or n.attrs["momentum"] or n.attrs["weight_decay"]:
            continue
        g = n.inputs[1]
        m = made.get(g.name)
        if (m is not None and m.node.op == "matmul" and m.act is None
                and g.name not in outputs and len(readers.get(g.name, [])) == 1):
            s.grad, s.inputs = m.node, [*m.node.inputs, n.inputs[0], n.inputs[-1]]
            drop.add(id(m))
    return [s for s in steps if id(s) not in drop]


# ------------------------------------------------------------------------ loop nests
def _eq(a: Size, b: Size) -> bool:
    return a == b or (a.coef == 0 and b.coef == 0)


def broadcast_strides(shape: Sequence, space: Sequence) -> list[Size]:
    """Element strides of a row-major ``shape`` read over the index ``space`` with numpy
    broadcasting (stride 0 along a dim where ``shape`` has 1 and ``space`` does not)."""
    shape = [1] * (len(space) - len(shape)) + list(shape)
    out, acc = [], Size(1)
    for d, s in reversed(list(zip(shape, space))):
        out.append(Size(0) if d == 1 and s != 1 else acc)
        acc = acc * Size.of_shape([d])
    return out[::-1]


def loop_nest(lang: Lang, space: Sequence, strides: Sequence[list[Size]]
              ) -> tuple[str, list[str]]:
    """Loops over ``space`` (row-major) and the index of each operand (given by its
    strides). Unit dims go; adjacent dims that every operand walks contiguously merge."""
    dims: list[tuple[Size, list[Size]]] = []
    for i, d in enumerate(space):
        ext = Size.of_shape([d])
        st = [s[i] for s in strides]
        if ext == Size(1):
            continue
        if dims and all(_eq(p, c * ext) for p, c in zip(dims[-1][1], st)):
            dims[-1] = (dims[-1][0] * ext, st)
        else:
            dims.append((ext, st))
    loops, idx = lang.nest([ext.c() for ext, _ in dims]), [[] for _ in strides]
    for k, (_, st) in enumerate(dims):
        var = f"i{k}"
        for j, s in enumerate(st):
            if s.coef:
                idx[j].append(var if s == Size(1) else f"{var} * {s.c()}")
    return loops, [" + ".join(i) or "0" for i in idx]


# ------------------------------------------------------------------------ emission
class Context:
    """What emission needs from the entry being generated."""

    def __init__(self, lang: Lang, ptr: Callable[[Value], str],
                 scratch: Callable[[CStep, int], str], bytecode_dir: str | None):
        self.lang, self.ptr, self.scratch, self.bytecode_dir = lang, ptr, scratch, bytecode_dir


def _n(v: Value) -> str:
    return Size.of_shape(v.shape).c()


def _int(s: Size) -> str:
    """A single dimension (a Size) as a GEMM's int argument (the batch is checked against
    :data:`MAX_GEMM_DIM` before every run, so the cast never wraps)."""
    text = s.c()
    return text if s.power == 0 else f"(int){text}" if text.isidentifier() else f"(int)({text})"


def _common(v: Value, ctx: Context) -> dict[str, str]:
    ct = CTYPES[v.dtype]
    return {"T": ct.c, "sfx": ct.sfx, "index": ctx.lang.index.format(n=_n(v))}


def product(step: CStep) -> tuple[Node, bool, bool]:
    """The linear/matmul node a GEMM step computes (the fused gradient, for ``sgd_gemm``)
    and its transpose flags: Linear is ``X · Wᵀ``."""
    n = step.grad or step.node
    if n.op == "linear":
        return n, False, True
    return n, n.attrs["trans_a"], n.attrs["trans_b"]


def gemm_routine(step: CStep) -> str | None:
    """The matrix-product routine a step calls (None if it calls none)."""
    if step.kernel not in ("linear", "matmul", "sgd_gemm"):
        return None
    n, ta, tb = product(step)
    cols = n.inputs[1].shape[0] if tb else n.inputs[1].shape[-1]
    if n.outputs[0].dtype == "float64":
        return "lc_dgemm_" + GEMMS[ta, tb]
    if step.precision == "bf16":
        return "lc_gemm_bf16_" + GEMMS[ta, tb]
    if (ta, tb) == (False, True) and isinstance(cols, int) and cols <= SMALL_N:
        return "lc_small_nt"
    return "lc_gemm_" + GEMMS[ta, tb]


def _mnk(step: CStep) -> tuple:
    n, ta, tb = product(step)
    a, b = _matrix(n.inputs[0].shape), _matrix(n.inputs[1].shape)
    m, k = (a[1], a[0]) if ta else a
    return m, b[0] if tb else b[1], k


def _matrix(shape) -> tuple[Size, Size]:
    """A ``[*, C]`` operand as the matrix of its rows (leading dims flattened, a view):
    its rows and columns."""
    return Size.of_shape(shape[:-1]), Size.of_shape(shape[-1:])


def gemm_dims(step: CStep) -> tuple[str, str, str]:
    """M, N, K of the product a GEMM step computes, as C expressions (batch: ``bn``, a
    size_t); the workspace planner sizes the GEMM pack area from them."""
    m, n, k = _mnk(step)
    return m.c(), n.c(), k.c()


def bf16_copy_bound(step: CStep) -> list[Size]:
    """Bytes that the bf16 copies of a bf16 product's operands take at most (its routine's
    ``lc_gemm_bf16_copy_floats``: M and N padded to 16 and K to 32, 2 bytes each, or 4
    bytes unpadded on the portable path): 1024 · (M·K + K·N)."""
    m, n, k = _mnk(step)
    return [Size(1024) * m * k, Size(1024) * k * n]


def gemm_operand_dims(step: CStep) -> list[tuple[Value, Size]]:
    """Every dimension a GEMM step hands its routine as an int — rows and columns of each
    operand seen as a matrix — (none for other steps)."""
    if step.kernel not in ("linear", "matmul", "sgd_gemm"):
        return []
    n = product(step)[0]
    return [(v, d) for v in (*n.inputs[:2], n.outputs[0]) for d in _matrix(v.shape)]


def _gemm(step: CStep, ctx: Context) -> dict[str, str]:
    p = ctx.ptr
    n = product(step)[0]
    a, b = n.inputs[0], n.inputs[1]
    y = n.outputs[0] if step.grad else step.outputs[0]
    bias = p(n.inputs[2]) if n.op == "linear" and len(n.inputs) > 2 else "NULL"
    m, cols, k = (_int(d) for d in _mnk(step))
    ct = CTYPES[y.dtype]
    gemm = gemm_routine(step)
    d = {"gemm": gemm, "m": m, "n": cols, "k": k,
         "alpha": c_literal(1, ct), "beta": c_literal(0, ct),
         "a": p(a), "lda": _int(_matrix(a.shape)[1]), "b": p(b),
         "ldb": _int(_matrix(b.shape)[1]),
         "c": p(y) if not step.grad else "", "ldc": cols, "bias": bias,
         "act": str(ACTS[step.act.op]) if step.act else "0",
         "pack": "pack" if gemm.startswith("lc_gemm") else "NULL",
         "pad": " " * (len(gemm) + 1)}
    if step.grad:   # P.next = 1 · P.next − lr · dW, with P.next first holding P
        pn, param, lr = step.outputs[0], step.node.inputs[0], step.node.inputs[-1]
        size = Size.of_shape(pn.shape) * Size(ct.itemsize)
        d.update(alpha=f"-{p(lr)}[0]", beta=c_literal(1, ct), c=p(pn), p=p(param),
                 bytes=size.c(), from_=gemm.startswith("lc_gemm"))
    return d


def _binary(step: CStep, ctx: Context) -> dict[str, str]:
    a, b = step.inputs
    y = step.outputs[0]
    loops, (yi, ai, bi) = loop_nest(ctx.lang, y.shape, [
        broadcast_strides(y.shape, y.shape), broadcast_strides(a.shape, y.shape),
        broadcast_strides(b.shape, y.shape)])
    return {"op": step.node.op, "T": CTYPES[y.dtype].c, "loops": loops, "y": ctx.ptr(y),
            "yi": yi, "a": ctx.ptr(a),
            "ai": ai, "b": ctx.ptr(b), "bi": bi}


def _broadcast_to(step: CStep, ctx: Context) -> dict[str, str]:
    x, y = step.inputs[0], step.outputs[0]
    loops, (yi, xi) = loop_nest(ctx.lang, y.shape, [
        broadcast_strides(y.shape, y.shape), broadcast_strides(x.shape, y.shape)])
    return {"loops": loops, "y": ctx.ptr(y), "yi": yi, "x": ctx.ptr(x), "xi": xi}


def _reduce_sum(step: CStep, ctx: Context) -> dict[str, str]:
    x, y = step.inputs[0], step.outputs[0]
    r = len(x.shape)
    axes = range(r) if step.node.attrs["axes"] is None else [
        a % r for a in step.node.attrs["axes"]]
    acc_strides, s = [], Size(1)
    for i in reversed(range(r)):
        acc_strides.append(Size(0) if i in axes else s)
        s = s if i in axes else s * Size.of_shape([x.shape[i]])
    loops, (ai, xi) = loop_nest(ctx.lang, x.shape, [
        acc_strides[::-1], broadcast_strides(x.shape, x.shape)])
    return {"loops": loops, "acc": ctx.scratch(step, 0), "acci": ai, "x": ctx.ptr(x),
            "xi": xi, "y": ctx.ptr(y), "n_out": _n(y), "T": CTYPES[y.dtype].c}


def _activation(step: CStep, ctx: Context) -> dict[str, str]:
    x, y = step.inputs[0], step.outputs[0]
    return {**_common(y, ctx), "op": step.node.op, "x": ctx.ptr(x), "y": ctx.ptr(y)}


def _activation_grad(step: CStep, ctx: Context) -> dict[str, str]:
    dy, y = step.inputs
    dx = step.outputs[0]
    return {**_common(dx, ctx), "op": step.node.op, "dy": ctx.ptr(dy), "y": ctx.ptr(y),
            "dx": ctx.ptr(dx)}


def _copy(step: CStep, ctx: Context) -> dict[str, str]:
    x, y = step.inputs[0], step.outputs[0]
    size = Size.of_shape(x.shape) * Size(CTYPES[x.dtype].itemsize)
    return {"x": ctx.ptr(x), "y": ctx.ptr(y), "bytes": size.c()}


def _row_copy(step: CStep, ctx: Context) -> dict:
    """concat and slice_last: each output row is contiguous runs of input rows (a memcpy
    per run and row in C; one thread per output element in CUDA, its run chosen by column)."""
    y = step.outputs[0]
    size = CTYPES[y.dtype].itemsize
    plus = lambda k: f" + {k}" if k else ""
    if step.node.op == "slice_last":
        x, start = step.inputs[0], step.node.attrs["start"]
        runs = [(x, start, 0, y.shape[-1])]   # (source, its first column, to column, width)
    else:
        runs, at = [], 0
        for x in step.inputs:
            runs.append((x, 0, at, x.shape[-1]))
            at += x.shape[-1]
    parts = [{"src": ctx.ptr(x), "src_w": Size(x.shape[-1]).c(), "src_off": plus(first),
              "dst_off": plus(to), "bytes": Size(w * size).c(), "end": Size(to + w).c(),
              "src_col": "c" + plus(first) if not to else f"(c - {to})"}
             for x, first, to, w in runs if w]
    for k, p in enumerate(parts):   # the run a column is in (CUDA)
        p["cond"] = ("else " if k else "") + (
            f"if (c < {p['end']}) " if k < len(parts) - 1 else "")
    return {"parts": parts, "per_element": ctx.lang.name == "cuda", "y": ctx.ptr(y),
            "width": Size(y.shape[-1]).c(), "rows": Size.of_shape(y.shape[:-1]).c(),
            "index": ctx.lang.index.format(n=_n(y))}


def _mse(step: CStep, ctx: Context) -> dict[str, str]:
    p, t = step.inputs
    return {**_common(p, ctx), "p": ctx.ptr(p), "t": ctx.ptr(t), "n": _n(p),
            "y": ctx.ptr(step.outputs[0])}


def _mse_grad(step: CStep, ctx: Context) -> dict[str, str]:
    dl, p, t = step.inputs
    return {**_common(p, ctx), "dl": ctx.ptr(dl), "p": ctx.ptr(p), "t": ctx.ptr(t),
            "n": _n(p), "dx": ctx.ptr(step.outputs[0])}


def _sce(step: CStep, ctx: Context) -> dict[str, str]:
    *head, z, labels = step.inputs
    d = {**_common(z, ctx), "z": ctx.ptr(z), "labels": ctx.ptr(labels),
         "rows": Size.of_shape(z.shape[:1]).c(), "cols": Size.of_shape(z.shape[1:]).c()}
    if head:   # the gradient: dloss, logits, labels -> dlogits
        d.update(dl=ctx.ptr(head[0]), dz=ctx.ptr(step.outputs[0]))
    else:
        d.update(y=ctx.ptr(step.outputs[0]))
    return d


def _sgd(step: CStep, ctx: Context) -> dict[str, str]:
    a = step.node.attrs
    p, g, *v, lr = step.inputs
    ct = CTYPES[p.dtype]
    d = {**_common(p, ctx), "p": ctx.ptr(p), "g": ctx.ptr(g), "lr": ctx.ptr(lr),
         "p_next": ctx.ptr(step.outputs[0]),
         "wd": c_literal(a["weight_decay"], ct) if a["weight_decay"] else "",
         "momentum": c_literal(a["momentum"], ct) if a["momentum"] else ""}
    if a["momentum"]:
        d.update(v=ctx.ptr(v[0]), v_next=ctx.ptr(step.outputs[1]))
    return d


def _adam(step: CStep, ctx: Context) -> dict[str, str]:
    a = step.node.attrs
    p, g, m, v, stepv, lr = step.inputs
    ct, dbl = CTYPES[p.dtype], CTYPES["float64"]
    pn, mn, vn = (ctx.ptr(o) for o in step.outputs)
    return {**_common(p, ctx), "p": ctx.ptr(p), "g": ctx.ptr(g), "m": ctx.ptr(m),
            "v": ctx.ptr(v), "step": ctx.ptr(stepv), "lr": ctx.ptr(lr), "p_next": pn,
            "m_next": mn, "v_next": vn, "decoupled": step.node.op == "adamw",
            "beta1": c_literal(a["beta1"], dbl), "beta2": c_literal(a["beta2"], dbl),
            "b1": c_literal(a["beta1"], ct), "b2": c_literal(a["beta2"], ct),
            "one_b1": c_literal(1 - a["beta1"], ct), "one_b2": c_literal(1 - a["beta2"], ct),
            "lerp_small": abs(1 - a["beta1"]) < 0.5,   # the branch torch.lerp takes
            "eps": c_literal(a["eps"], ct),
            "wd": c_literal(a["weight_decay"], ct) if a["weight_decay"] else "",
            "wd_d": c_literal(a["weight_decay"], dbl)}


def _adagrad(step: CStep, ctx: Context) -> dict[str, str]:
    a = step.node.attrs
    p, g, h, stepv, lr = step.inputs
    ct = CTYPES[p.dtype]
    return {**_common(p, ctx), "p": ctx.ptr(p), "g": ctx.ptr(g), "h": ctx.ptr(h),
            "step": ctx.ptr(stepv), "lr": ctx.ptr(lr), "p_next": ctx.ptr(step.outputs[0]),
            "h_next": ctx.ptr(step.outputs[1]),
            "lr_decay": c_literal(a["lr_decay"], CTYPES["float64"]),
            "wd": c_literal(a["weight_decay"], ct) if a["weight_decay"] else "",
            "eps": c_literal(a["eps"], ct)}


def _onnx_momentum(step: CStep, ctx: Context) -> dict[str, str]:
    a = step.node.attrs
    x, g, v, t, r = step.inputs
    ct = CTYPES[x.dtype]
    return {**_common(x, ctx), "x": ctx.ptr(x), "g": ctx.ptr(g), "v": ctx.ptr(v),
            "t": ctx.ptr(t), "r": ctx.ptr(r), "x_next": ctx.ptr(step.outputs[0]),
            "v_next": ctx.ptr(step.outputs[1]), "nesterov": bool(a["nesterov"]),
            "nc": c_literal(a["norm_coefficient"], ct), "alpha": c_literal(a["alpha"], ct),
            "beta": c_literal(a["beta"], ct)}


def _onnx_adam(step: CStep, ctx: Context) -> dict[str, str]:
    a = step.node.attrs
    x, g, v, h, t, r = step.inputs
    ct, dbl = CTYPES[x.dtype], CTYPES["float64"]
    xn, vn, hn = (ctx.ptr(o) for o in step.outputs)
    return {**_common(x, ctx), "x": ctx.ptr(x), "g": ctx.ptr(g), "v": ctx.ptr(v),
            "h": ctx.ptr(h), "t": ctx.ptr(t), "r": ctx.ptr(r), "x_next": xn, "v_next": vn,
            "h_next": hn, "nc": c_literal(a["norm_coefficient"], ct),
            "alpha": c_literal(a["alpha"], ct), "beta": c_literal(a["beta"], ct),
            "one_alpha": c_literal(1 - a["alpha"], ct), "one_beta": c_literal(1 - a["beta"], ct),
            "alpha_d": c_literal(a["alpha"], dbl), "beta_d": c_literal(a["beta"], dbl),
            "eps": c_literal(a["epsilon"], ct),
            "keep": c_literal(1 - a["norm_coefficient_post"], ct)}


def _pointwise(step: CStep, ctx: Context) -> dict[str, str]:
    """The activations with kernels of their own (leaky_relu, gelu, silu, elu, softplus,
    hardtanh, prelu, ...) and their gradients (which read dOut and the input x): each input
    by its name in the op, each float attribute a literal of the op's dtype by its name."""
    from ..ops.activations import K_ALPHA, K_BETA, K_KAPPA, SQRT1_2
    from ..ops.activations_exp import elu_constants
    from ..ops.math_unary import pow_form

    n = step.node
    y = step.outputs[0]
    ct = CTYPES[y.dtype]
    consts = {"half": 0.5, "sqrt1_2": SQRT1_2, "k_beta": K_BETA, "kappa": K_KAPPA,
              "kappa3": 3 * K_KAPPA, "k_alpha": K_ALPHA,
              **{k: v for k, v in n.attrs.items() if isinstance(v, float)}}
    if n.op.split("_")[0] in ("elu", "selu", "celu"):
        consts.update(zip(("alpha", "scale", "input_scale"), elu_constants(n.op, **n.attrs)))
    forms = {}
    if n.op in ("pow", "pow_grad"):   # torch's shortcut of x^p and of x^(p − 1)
        p = n.attrs["exponent"]
        consts["exponent_m1"] = p - 1
        forms = {"form": pow_form(p), "form_grad": "zero" if p == 0 else pow_form(p - 1)}
    d = {**_common(y, ctx), "op": n.op, "tanh": n.attrs.get("approximate") == "tanh", **forms,
         **{k: c_literal(v, ct) for k, v in consts.items()}}
    for name, v in zip(get_op(n.op).inputs, step.inputs):
        d[name.rstrip("?")] = ctx.ptr(v)
    if "slope" in d:
        d["si"] = flat_index(step.inputs[-1].shape, y.shape)
    return {**d, ("dx" if "dy" in d else "y"): ctx.ptr(y)}


def flat_index(shape: Sequence, space: Sequence) -> str:
    """The element of a row-major ``shape`` operand, numpy-broadcast over ``space``, that the
    flat index ``i`` of ``space`` reads (a C expression)."""
    strides = broadcast_strides(shape, space)
    terms, inner = [], Size(1)
    for k in reversed(range(len(space))):
        ext = Size.of_shape([space[k]])
        if strides[k].coef and ext != Size(1):
            coord = "i" if inner == Size(1) else f"i / {_paren(inner.c())}"
            if any(Size.of_shape([d]) != Size(1) for d in space[:k]):   # not the outermost
                coord += f" % {_paren(ext.c())}"
            terms.append(coord if strides[k] == Size(1) else
                         f"({coord}) * {_paren(strides[k].c())}")
        inner = inner * ext
    return " + ".join(terms) or "0"


def _paren(text: str) -> str:
    return text if text.isidentifier() or text.isdigit() else f"({text})"


def row_count(step: CStep) -> Size:
    """The rows of a row-wise kernel (softmax, layer_norm): every dim but the last."""
    return Size.of_shape(step.outputs[0].shape[:-1])


def _rows(step: CStep, ctx: Context) -> dict[str, str]:
    """softmax/log_softmax, layer_norm and their gradients: one loop iteration per row."""
    y = step.outputs[0]
    ct = CTYPES[y.dtype]
    d = {"T": ct.c, "sfx": ct.sfx, "op": step.node.op, "cols": Size.of_shape(y.shape[-1:]).c(),
         "index": ctx.lang.index.format(n=row_count(step).c())}
    names = get_op(step.node.op).inputs
    d.update({n.rstrip("?"): ctx.ptr(v) for n, v in zip(names, step.inputs)})
    d.setdefault("scale", "")
    d.setdefault("bias", "")
    if "epsilon" in step.node.attrs:
        d["eps"] = c_literal(step.node.attrs["epsilon"], CTYPES["float64"])
    out = "dx" if step.node.op.endswith("_grad") else "y"
    return {**d, out: ctx.ptr(y)}


# ------------------------------------------------------------------------ size limits
@dataclass(frozen=True)
class Limit:
    """Tensor ``tensor`` may have at most ``most`` of ``size`` (elements, a monomial of the
    batch N): what the code that computes it can index (``what`` says which code, and what
    it takes)."""

    tensor: str
    size: Size
    most: int
    what: str

    def max_batch(self) -> int:
        """The largest batch N that keeps the size within the limit."""
        c, p = self.size.coef, self.size.power
        if c == 0 or p == 0:
            return 2**63 - 1 if c <= self.most else -1
        n = int((self.most / c) ** (1 / p))
        while c * (n + 1) ** p <= self.most:
            n += 1
        while n > 0 and c * n**p > self.most:
            n -= 1
        return n


def gemm_limits(steps: Sequence[CStep]) -> list[Limit]:
    """Each matrix product with the batch among its dimensions (an int argument)."""
    out = []
    for s in steps:
        out += [Limit(v.name, d, MAX_GEMM_DIM, f"a matrix product ('{product(s)[0].name}') "
                      f"takes dimensions up to {MAX_GEMM_DIM}")
                for v, d in gemm_operand_dims(s) if d.power > 0]
    return out


class BatchLimit:
    """The largest batch N that generated code can take, checked before every run: a larger
    one is a FeedError naming the tensor that limits it, never a silent wrap-around."""

    def __init__(self, limits: Sequence[Limit], target: str):
        self.target, self.limit = target, min(limits, key=Limit.max_batch, default=None)
        self.most = self.limit.max_batch() if self.limit else 2**63 - 1
        if self.most < 0:   # a fixed size over the limit (no batch fits)
            raise CompileError(f"tensor '{self.limit.tensor}' is too large for target "
                               f"'{target}': {self.limit.what}")

    def check(self, n: int) -> int:
        """``n``, or a FeedError if the code cannot take a batch that large."""
        if n > self.most:
            lim = self.limit
            raise FeedError(f"batch size N={n} is too large for target '{self.target}': "
                            f"at tensor '{lim.tensor}', {lim.what}, so N ≤ {self.most}; "
                            "feed smaller batches")
        return n


KERNELS: dict[str, Callable[[CStep, Context], dict]] = {
    "linear": _gemm, "matmul": _gemm, "sgd_gemm": _gemm, "binary": _binary,
    "broadcast_to": _broadcast_to,
    "reduce_sum": _reduce_sum, "activation": _activation, "activation_grad": _activation_grad,
    "copy": _copy, "row_copy": _row_copy, "mse": _mse, "mse_grad": _mse_grad,
    "softmax_cross_entropy": _sce,
    "softmax_cross_entropy_grad": _sce, "sgd": _sgd, "adam": _adam,
    "adagrad": _adagrad, "onnx_momentum": _onnx_momentum, "onnx_adam": _onnx_adam,
    "pointwise": _pointwise, "pointwise_grad": _pointwise,
    "softmax": _rows, "softmax_grad": _rows, "layer_norm": _rows, "layer_norm_grad": _rows,
}


def emit(step: CStep, ctx: Context) -> str:
    """The C code of one step (its template rendered with the step's flat dict)."""
    if step.kernel not in KERNELS:
        raise CompileError(f"node '{step.node.name}': no C kernel for op '{step.node.op}' "
                           f"(C kernels: {', '.join(sorted(KERNELS))})")
    return render(f"c/{step.kernel}.c.j2", ctx.bytecode_dir,
                  **KERNELS[step.kernel](step, ctx)).rstrip("\n")
