"""The tf32 / bf16 precisions of the CUDA backends, on the CPU emulator.

(a) The tensor-core GEMM library (templates/cuda/gemm_mma.cu.j2, emulator tiles) through
    ctypes: the three Linear products (nt, nn, tn) and tt at tile-edge shapes, against numpy
    float64 products of operands rounded to tf32 (ties away) / bf16 (ties to even) by the
    independent roundings of test_cuda_mma (bound 1e-5); misaligned fp32 operands (the
    4-byte copy path), alpha / device alpha / beta / bias / activations, the bf16 copy the
    epilogue writes, NaN and ±Inf as numpy has them, the bf16 operand copy kernel.
(b) lc.compile(..., precision=...) on target cuda-cpu: products whose operands are feeds
    against the rounded reference (1e-5); training steps (loss, gradients, updates) against
    the float64 reference within 2e-2, and measurably not fp32.
(c) nvcc builds the tf32/bf16 sources for sm_80 and sm_90 without spills, and their PTX
    holds mma.sync / ldmatrix / cp.async.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import numpy as np
import pytest
from helpers import autocast_mlp_loss, mlp
from test_cuda_kernels import Job, parse_ptxas
from test_cuda_mma import bf16, tf32

import lincompile as lc
from lincompile.backends import cuda
from lincompile.backends.cuda_build import find_nvcc
from lincompile.backends.reference import ReferenceExecutable
from lincompile.ops import get_op

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent / "templates"
FLAGS = ["-std=c++20", "-O1", "-Wall", "-Wno-unknown-pragmas", "-fPIC", "-fno-gnu-unique"]
PREC = {"tf32": 1, "bf16": 2}
ROUND = {"tf32": tf32, "bf16": bf16}
#: the emulator, and the GPU where there is one
TARGETS = ["cuda-cpu"] + (["cuda"] if cuda.gpu_available() else [])
KINDS = {"nt": (False, True), "nn": (False, False), "tn": (True, False), "tt": (True, True)}
ACTS = {0: lambda x: x, 1: lambda x: np.where(np.isnan(x), x, np.maximum(x, 0)),
        2: lambda x: 1 / (1 + np.exp(-x)), 3: np.tanh}


def render_mma(**extra) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("cuda/gemm_mma.cu.j2").render(**cuda.MMA_EMU_TILES, **extra)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("lc_precision")
    shutil.copy(TEMPLATES / "cuda" / "cuda_cpu.h", d / "cuda_cpu.h")
    (d / "gemm_mma.cu").write_text(render_mma())
    shutil.copy(HERE / "cuda_mma_wrappers.cu", d / "wrappers.cpp")
    out = {}
    if shutil.which("g++"):
        out["lib"] = Job(["g++", *FLAGS, "-shared", "-include", "cuda_cpu.h", "-I", ".",
                          "wrappers.cpp", "-o", "lib.so"], d, "g++ (tensor-core GEMMs)")
    nvcc = find_nvcc()
    if nvcc:
        src = cuda._CudaSource({"train_step": lc.training_graph(
            mlp((30, 37, 5)), loss="cross-entropy", optimizer=lc.SGD(0.1))}, "m", "sm_90",
            cuda.GPU_TILES, precision="bf16")
        for name, text in src.files().items():
            (d / name).write_text(text)
        for arch in ("sm_80", "sm_90"):
            out[arch] = Job(["bash", "-c", f"{nvcc} -std=c++17 -O3 -arch={arch} -ptx model.cu "
                             f"-o model_{arch}.ptx && {Path(nvcc).parent}/ptxas -arch={arch} "
                             f"-v model_{arch}.ptx -o model_{arch}.cubin"], d,
                            f"nvcc + ptxas {arch}")
    yield d, out
    for j in out.values():
        j.stop()


class Lib:
    def __init__(self, path: Path):
        self.L = L = ctypes.CDLL(str(path))
        vp, ll, f, i = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_float, ctypes.c_int
        L.t_mma_gemm.argtypes = [i, i, i, ll, ll, ll, f, vp, vp, ll, vp, ll, f, vp, ll, vp, i,
                                 vp, ll]
        L.t_cast_bf16.argtypes = [ll, ll, vp, ll, vp, ll]

    def gemm(self, prec, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, alpha=1.0, alpha_dev=None,
             beta=0.0, bias=None, act=0, Cb=None, ldcb=0) -> int:
        return self.L.t_mma_gemm(PREC[prec], ta, tb, M, N, K, alpha, ptr(alpha_dev), ptr(A),
                                 lda, ptr(B), ldb, beta, ptr(C), ldc, ptr(bias), act, ptr(Cb),
                                 ldcb)


def ptr(a):
    return None if a is None else a.ctypes.data


@pytest.fixture(scope="module")
def lib(jobs):
    d, js = jobs
    if "lib" not in js:
        pytest.skip("g++ not available")
    js["lib"].check()
    return Lib(d / "lib.so")


def as_bf16(x: np.ndarray, ld: int) -> np.ndarray:
    """x [rows, cols] float32 → bf16 bits [rows, ld] (round to nearest even, zero padding)."""
    out = np.zeros((x.shape[0], ld), np.uint16)
    out[:, :x.shape[1]] = (bf16(x).view(np.uint32) >> 16).astype(np.uint16)
    return out


def operands(rng, ta, tb, M, N, K):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return (f(K, M) if ta else f(M, K)), (f(N, K) if tb else f(K, N))


def reference(prec, ta, tb, A, B):
    r = ROUND[prec]
    a, b = r(A).astype(np.float64), r(B).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (a.T if ta else a) @ (b.T if tb else b)


def rel(got, ref) -> float:
    n = np.linalg.norm(ref)
    return float(np.linalg.norm(got - ref) / n) if n else float(np.abs(got).max(initial=0))


def run(lib, prec, kind, M, N, K, rng, **kw):
    """One product with natural layouts; returns (C, reference of the rounded operands)."""
    ta, tb = KINDS[kind]
    A, B = operands(rng, ta, tb, M, N, K)
    C = np.full((M, N), np.nan, np.float32)
    if prec == "bf16":
        lda, ldb = -(-A.shape[1] // 8) * 8, -(-B.shape[1] // 8) * 8
        a, b = as_bf16(A, lda), as_bf16(B, ldb)
    else:
        a, b, lda, ldb = A, B, A.shape[1], B.shape[1]
    assert lib.gemm(prec, ta, tb, M, N, K, a, lda, b, ldb, C, N, **kw) == 0
    return C, reference(prec, ta, tb, A, B)


# ------------------------------------------------------------------- (a) the GEMM library
@pytest.mark.parametrize("prec", ["tf32", "bf16"])
@pytest.mark.parametrize("kind", ["nt", "nn", "tn", "tt"])
def test_products_at_tile_edges(lib, prec, kind):
    rng = np.random.default_rng(3)
    shapes = [(1, 1, 1), (33, 40, 17), (70, 8, 100), (31, 33, 64), (16, 32, 33)]
    for M, N, K in shapes:
        C, ref = run(lib, prec, kind, M, N, K, rng)
        assert rel(C, ref) <= 1e-5, f"{prec} {kind} {M}x{N}x{K}: {rel(C, ref):.2e}"
    # the bound can fail: the same product of unrounded operands is off by > 1e-4
    ta, tb = KINDS[kind]
    C, ref = run(lib, prec, kind, 40, 40, 64, np.random.default_rng(0))
    A0, B0 = operands(np.random.default_rng(0), ta, tb, 40, 40, 64)
    exact = (A0.T if ta else A0).astype(np.float64) @ (B0.T if tb else B0)
    assert rel(C, exact) > 1e-4


def test_tf32_misaligned_operands_take_the_4_byte_path(lib):
    rng = np.random.default_rng(4)
    for kind, (ta, tb) in KINDS.items():
        M, N, K = 35, 19, 45
        A, B = operands(rng, ta, tb, M, N, K)
        # one float past a 16-byte boundary, odd leading dims
        abuf = np.zeros(A.size + A.shape[0] * 3 + 1, np.float32)
        lda = A.shape[1] + 3
        a = abuf[1:1 + A.shape[0] * lda].reshape(A.shape[0], lda)
        a[:, :A.shape[1]] = A
        C = np.full((M, N), np.nan, np.float32)
        assert lib.gemm("tf32", ta, tb, M, N, K, a, lda, B, B.shape[1], C, N) == 0
        ref = reference("tf32", ta, tb, A, B)
        assert rel(C, ref) <= 1e-5, kind


def test_bf16_needs_aligned_padded_operands(lib):
    A = np.zeros((4, 8), np.uint16)
    C = np.zeros((4, 4), np.float32)
    assert lib.gemm("bf16", False, True, 4, 4, 6, A, 6, A, 8, C, 4) == 1   # lda % 8
    assert lib.gemm("bf16", False, True, 4, 4, 8, A, 8, A, 8, C, 3) == 1   # ldc < N
    assert lib.gemm("tf32", False, True, 4, 4, 8, A, 4, A, 8, C, 4) == 1   # lda < K


@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_epilogue_alpha_beta_bias_activation_and_bf16_copy(lib, prec):
    rng = np.random.default_rng(5)
    M, N, K = 37, 21, 24
    ta, tb = KINDS["nt"]
    A, B = operands(rng, ta, tb, M, N, K)
    if prec == "bf16":
        a, b, lda, ldb = as_bf16(A, 24), as_bf16(B, 24), 24, 24
    else:
        a, b, lda, ldb = A, B, K, K
    prod = reference(prec, ta, tb, A, B)
    bias = rng.standard_normal(N).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    lr = np.array([0.25], np.float32)
    for act in range(4):
        C = c0.copy()
        cb = np.full((M, 24), 0xFFFF, np.uint16)
        assert lib.gemm(prec, ta, tb, M, N, K, a, lda, b, ldb, C, N, alpha=-2.0, alpha_dev=lr,
                        beta=0.5, bias=bias, act=act, Cb=cb, ldcb=24) == 0
        ref = ACTS[act](-0.5 * prod + bias + 0.5 * c0.astype(np.float64))
        assert rel(C, ref) <= 1e-5, act
        np.testing.assert_array_equal(cb[:, :N], as_bf16(C, N))   # the copy of the result
        assert (cb[:, N:] == 0).all()                             # zero padding


@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_nan_and_inf_propagate_like_numpy(lib, prec):
    rng = np.random.default_rng(6)
    M, N, K = 20, 16, 16
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((N, K)).astype(np.float32)
    A[3, 5], A[7, 2], B[4, 9] = np.nan, np.inf, -np.inf
    if prec == "bf16":
        a, b = as_bf16(A, 16), as_bf16(B, 16)
    else:
        a, b = A, B
    bias = np.zeros(N, np.float32)
    bias[2] = np.nan
    ref = ACTS[1](reference(prec, False, True, A, B) + bias)
    C = np.zeros((M, N), np.float32)
    assert lib.gemm(prec, False, True, M, N, K, a, K, b, K, C, N, bias=bias, act=1) == 0
    np.testing.assert_array_equal(np.isnan(C), np.isnan(ref))      # relu(NaN) is NaN
    np.testing.assert_array_equal(np.isposinf(C), np.isposinf(ref))
    fin = np.isfinite(ref)
    assert rel(C[fin], ref[fin]) <= 1e-5


def test_bf16_operand_copy(lib):
    rng = np.random.default_rng(7)
    for rows, cols in [(1, 1), (5, 13), (33, 784 // 8 * 8 + 3)]:
        x = rng.standard_normal((rows, cols)).astype(np.float32) * 100
        x.flat[::7] = np.nan
        ld = -(-cols // 8) * 8
        y = np.full((rows, ld), 0xABCD, np.uint16)
        assert lib.L.t_cast_bf16(rows, cols, ptr(x), cols, ptr(y), ld) == 0
        want = as_bf16(x, ld)
        got_nan = np.isnan((y.astype(np.uint32) << 16).view(np.float32))
        np.testing.assert_array_equal(got_nan, np.isnan((want.astype(np.uint32) << 16)
                                                          .view(np.float32)))
        np.testing.assert_array_equal(y[~got_nan], want[~got_nan])


# ----------------------------------------------------------------- (b) the compiled graphs
def product_graphs() -> dict[str, lc.Graph]:
    """Linear (nt, bias + relu in the epilogue), dX = dY·W (nn) and dW = dYᵀ·X (tn), every
    operand a feed, at sizes off the emulator's 32-wide tiles."""
    out = {}
    g = lc.Graph("nt")
    x, w, b = g.input("x", ["N", 33]), g.input("w", [21, 33]), g.input("b", [21])
    g.output(g.relu(g.apply("linear", [x, w, b])), name="y")
    out["nt"] = g.verify()
    g = lc.Graph("nn")
    g.output(g.matmul(g.input("dy", ["N", 40]), g.input("w", [40, 18])), name="y")
    out["nn"] = g.verify()
    g = lc.Graph("tn")
    g.output(g.matmul(g.input("dy", ["N", 9]), g.input("x", ["N", 35]), trans_a=True),
             name="y")
    out["tn"] = g.verify()
    return out


def rounded_reference(graph: lc.Graph, feeds: dict, prec: str) -> np.ndarray:
    """The graph's one product in float64 with its operands rounded as the precision does."""
    n = next(n for n in graph.nodes if n.op in ("linear", "matmul"))
    r = ROUND[prec]
    a, b = (r(feeds[v.name]).astype(np.float64) for v in n.inputs[:2])
    if n.op == "linear":
        y = a @ b.T + feeds["b"]
        return np.where(np.isnan(y), y, np.maximum(y, 0))
    return (a.T if n.attrs["trans_a"] else a) @ (b.T if n.attrs["trans_b"] else b)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_compiled_products_against_rounded_operands(prec, target):
    for kind, g in product_graphs().items():
        exe = lc.compile(g, target, precision=prec)
        assert exe.precision == prec
        assert f"LC_PREC_{prec.upper()}" in exe.source()
        for n in (1, 33, 70):
            feeds = lc.random_feeds(g, n, seed=n)
            got = exe.run(feeds)["y"]
            ref = rounded_reference(g, feeds, prec)
            assert rel(got, ref) <= 1e-5, f"{prec} {kind} N={n}: {rel(got, ref):.2e}"


def tf32_rz(x):
    """float32 → tf32 as the tensor cores read fp32 operands from shared memory (the wgmma
    kernels): the low 13 mantissa bits ignored, no rounding."""
    return (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def test_gpu_tiles_emulated_at_tile_edges():
    """The GPU's tile configuration (mma.sync: 128 x 128 blocks of 8 warps, 4 stages; sm_90a:
    the wgmma kernels' 128 x 256 tiles, which y (both precisions) and dX, dW (bf16) are large
    enough for) run by the emulator, at sizes just past one tile, for both precisions and the
    three products."""
    g = lc.Graph("edges")
    x, w, b = g.input("x", ["N", 136]), g.input("w", [129, 136]), g.input("b", [129])
    y = g.output(g.relu(g.apply("linear", [x, w, b])), name="y")
    g.output(g.matmul(y, w), name="dx")
    g.output(g.matmul(y, x, trans_a=True), name="dw")
    g.verify()
    feeds = lc.random_feeds(g, 130, seed=3)
    for prec in ("tf32", "bf16"):
        exe = cuda.compile_cpu(g, tiles=cuda.GPU_TILES, precision=prec)
        got = exe.run(feeds)
        r = ROUND[prec]
        X, W = (r(feeds[k]).astype(np.float64) for k in ("x", "w"))
        ry = tf32_rz if prec == "tf32" else r   # tf32 y = x.W^T: on wgmma
        Y = np.maximum(ry(feeds["x"]).astype(np.float64) @ ry(feeds["w"]).astype(np.float64).T
                       + feeds["b"], 0)
        assert rel(got["y"], Y) <= 1e-5, prec
        Yr = r(got["y"]).astype(np.float64)   # the kernels' own y, rounded as the next
        assert rel(got["dx"], Yr @ W) <= 1e-5, prec       # products read it
        assert rel(got["dw"], Yr.T @ X) <= 1e-5, prec


def rounded_step_reference(graph: lc.Graph, feeds: dict, prec: str) -> dict:
    """The graph in float64 with every product's operands first stored as float32 and
    rounded as ``prec`` does (what the kernels compute, up to float32 rounding elsewhere)."""
    r = ROUND[prec]
    ex = ReferenceExecutable(graph, "float64")
    env = {**ex.params, **{k: np.asarray(v, np.float64) if v.dtype.kind == "f" else v
                           for k, v in feeds.items()}}
    with np.errstate(all="ignore"):
        for n in graph.nodes:
            args = [env[v.name] for v in n.inputs]
            if n.op in ("linear", "matmul"):
                args[:2] = [r(a.astype(np.float32)).astype(np.float64) for a in args[:2]]
            res = get_op(n.op).reference(*args, **n.attrs)
            for v, x in zip(n.outputs, res if isinstance(res, tuple) else (res,)):
                x = np.asarray(x)
                env[v.name] = x.astype(np.float64) if x.dtype.kind == "f" else x
    return {v.name: env[v.name] for v in graph.outputs}


def step_errors(act: str, opt, grads: bool, prec: str, seed: int = 2,
                target: str = "cuda-cpu"):
    """(executable source, feeds, errors vs float64, errors vs the rounded reference) of one
    training step of a 64-96-48-10 MLP at its initial parameters, batch 45."""
    g = lc.training_graph(mlp((64, 96, 48, 10), act=act, seed=1), loss="cross-entropy",
                          optimizer=opt, emit_grads=grads)
    exe = lc.compile(g, target, precision=prec)
    feeds = lc.random_feeds(g, 45, seed=seed)
    feeds.update({k: np.asarray(v, feeds[k].dtype) for k, v in g.initial_state.items()})
    got = exe.run(feeds)
    ref = ReferenceExecutable(g, "float64").run(feeds)
    same = rounded_step_reference(g, feeds, prec)
    for name, r in got.items():
        assert np.isfinite(r).all(), name
    fl = [k for k, r in ref.items() if r.dtype.kind == "f"]
    return (exe.source(), feeds, {k: rel(got[k], ref[k]) for k in fl},
            {k: rel(got[k], same[k]) for k in fl})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_training_step_within_2e_2_of_float64(prec, target):
    """tanh and plain SGD (the dW products fused into the updates): every output within
    2e-2 of float64 and 1e-3 of the rounded reference, and measurably not fp32."""
    src, _, e64, same = step_errors("tanh", lc.SGD(0.1), False, prec, target=target)
    assert "LC_CHECK(lc_mma_gemm(" in src and "LC_CHECK(lc_gemm_" not in src
    if prec == "bf16":   # copies of x and the 3 weights (one launch), of 3 dY; h1 and h2
        # get theirs from the epilogues of fc1 and fc2
        assert src.count("LC_CHECK(lc_cast_bf16(") == 3, src.count("LC_CHECK(lc_cast_bf16(")
        assert "4 bf16 copies in one launch" in src
    assert max(e64.values()) <= 2e-2, e64
    assert max(same.values()) <= 1e-3, same
    assert max(e64.values()) > 1e-4, "the products were not computed in reduced precision"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_relu_step_like_torch_autocast(prec, target):
    """relu, momentum and weight decay, gradients out: within 1e-3 of the rounded reference;
    in bf16 the gradients' error from float64 is that of torch.autocast (relu masks flip
    where bf16 products move a pre-activation across zero: both reach ~6e-2 here)."""
    _, feeds, e64, same = step_errors("relu", lc.SGD(0.05, 0.9, 1e-2), True, prec,
                                      target=target)
    assert max(same.values()) <= 1e-3, same
    if prec == "tf32":
        assert max(e64.values()) <= 2e-2, e64
        return
    torch = pytest.importorskip("torch")
    P = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()
         if k.startswith("fc") and ".velocity" not in k}
    loss = autocast_mlp_loss(torch, feeds["x"], feeds["target"], P)
    loss.backward()
    g = lc.training_graph(mlp((64, 96, 48, 10), seed=1), loss="cross-entropy", optimizer=None)
    ref = ReferenceExecutable(g, "float64").run({k: feeds[k] for k in (v.name for v in g.inputs)})
    for k, r in ref.items():
        if k.endswith(".grad"):
            theirs = rel(P[k[:-len(".grad")]].grad.numpy(), r)
            assert e64[k] <= 1.25 * theirs + 1e-3, f"{k}: {e64[k]:.2e} vs autocast {theirs:.2e}"


def test_precision_is_checked():
    g = product_graphs()["nt"]
    with pytest.raises(lc.CompileError, match="precision must be one of"):
        lc.compile(g, "cuda-cpu", precision="fp16")
    with pytest.raises(lc.CompileError, match="sm_80 or newer"):
        cuda._CudaSource({"forward": g}, "m", "sm_75", cuda.GPU_TILES, precision="tf32")


def test_cli_precision_flags(tmp_path):
    m = mlp((12, 9, 3), seed=4, name="tiny")
    lc.save_onnx(m, tmp_path / "tiny.onnx")
    cli = [sys.executable, "-m", "lincompile"]
    r = subprocess.run([*cli, "validate", tmp_path / "tiny.onnx", "--targets",
                        "reference,cuda-cpu", "--precision", "bf16", "--batch", "5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0.02 for bf16 on the C and CUDA targets" in r.stdout
    assert re.search(r"^cuda-cpu\s+fc2\s.*ok$", r.stdout, re.M), r.stdout
    r = subprocess.run([*cli, "compile", tmp_path / "tiny.onnx", "--target", "cuda",
                        "--precision", "tf32", "-o", tmp_path / "out"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lc_mma_gemm(LC_PREC_TF32" in (tmp_path / "out" / "model.cu").read_text()
    for bad, says in ((["--target", "c", "--precision", "tf32"], "tf32"),
                      (["--target", "cuda", "--precision", "bf16", "--arch", "sm_75"], "bf16")):
        r = subprocess.run([*cli, "compile", tmp_path / "tiny.onnx", *bad, "-o",
                            tmp_path / "bad"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert says in r.stderr


# ---------------------------------------------------------------------------- (c) nvcc
def test_nvcc_builds_tensor_core_sources_for_sm80_and_sm90(jobs):
    d, js = jobs
    if "sm_90" not in js:
        pytest.skip("nvcc not found: cannot compile the CUDA sources on this machine")
    for arch in ("sm_80", "sm_90"):
        info = parse_ptxas(js[arch].check())
        ptx = (d / f"model_{arch}.ptx").read_text()
        for instr in ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", "cp.async.cg.shared",
                      "cp.async.wait_group"):
            assert instr in ptx, f"{instr} missing from the {arch} PTX"
        mma = {k: v for k, v in info.items() if "lc_mma_kernel" in k[0]}
        assert len(mma) == 12, sorted(info)   # tf32: 4 layouts x 2 copy paths; bf16: 4
        for (fn, _), v in mma.items():
            assert v.get("spill_st") == 0 and v.get("stack") == 0, (fn, v)
        assert re.search(r"\.entry\s+\S*lc_cast_bf16_kernel", ptx)


def test_bf16_digits_training_tracks_torch_autocast():
    """100 bf16 steps of the demo's digits MLP (cuda-cpu) and the same 100 steps in torch
    with ``torch.autocast(dtype=torch.bfloat16)``, from the same weights on the same
    minibatches: the loss curves agree within 2 % (means over 10 steps) and the held-out
    accuracies within 2 points."""
    torch = pytest.importorskip("torch")
    from lincompile import datasets
    from lincompile.demo import digits_mlp

    x, y = datasets.load_digits()
    x_tr, y_tr, x_te, y_te = datasets.split(x, y, 0.2, 0)
    model = digits_mlp(0)
    train = lc.training_graph(model, loss="cross-entropy", optimizer=lc.SGD(0.1, momentum=0.9))
    exe = lc.compile(train, "cuda-cpu", precision="bf16")
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(x_tr), 32, replace=False) for _ in range(100)]

    state, ours = dict(train.initial_state), []
    for idx in batches:
        out = exe.run({"x": x_tr[idx], "target": y_tr[idx], "lr": np.float32(0.1), **state})
        state = {k: out[f"{k}.next"] for k in state}
        ours.append(float(out["loss"]))

    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for i, name in ((0, "fc1"), (2, "fc2")):
            net[i].weight.copy_(torch.from_numpy(model.params[f"{name}.weight"].data))
            net[i].bias.copy_(torch.from_numpy(model.params[f"{name}.bias"].data))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    theirs = []
    for idx in batches:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(torch.from_numpy(x_tr[idx]))
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(y_tr[idx]))
        loss.backward()
        opt.step()
        theirs.append(float(loss.detach()))

    a, b = np.array(ours).reshape(10, 10).mean(1), np.array(theirs).reshape(10, 10).mean(1)
    assert np.all(np.abs(a - b) <= 0.02 * b), (a, b)
    with torch.no_grad():
        theirs_acc = float((net(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    trained = model.clone()
    for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        trained.params[k].data = state[k]
    ours_acc = float((ReferenceExecutable(trained).run({"x": x_te})["logits"].argmax(1)
                      == y_te).mean())
    assert abs(ours_acc - theirs_acc) <= 0.02, (ours_acc, theirs_acc)
