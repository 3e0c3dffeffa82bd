"""precision="bf16" on target c: bf16 operands, float32 sums (torch.autocast's bf16).

(a) templates/c/gemm_bf16.c.j2 on its own, built four ways on this host: AMX-BF16
    (``-march=native``; and without AVX512-BF16, so integer code rounds the operands),
    AVX512-BF16 (``-march=native -mno-amx-tile -mno-amx-bf16``) and the portable path
    (``-march=x86-64-v3``, no bf16 instructions); each skips with the reason where the host
    lacks the instructions. Every layout (nt, nn, tn, tt) at tile-edge shapes
    (odd K, N not a multiple of 16/32, M = 1, K = 0), alpha/beta/bias/activation epilogues
    and the ``_from`` twin of the fused SGD update, against numpy float64 products of
    operands rounded to bf16 by an independent rounding (bound 1e-5, as the CUDA tests);
    2 threads bitwise equal to 1; the rounding itself (ties to even, NaN, ±Inf); NaN/±Inf.
(b) ``lc.compile(..., "c", precision="bf16")``: products and training steps against the
    rounded float64 reference, the same step on cuda-cpu in bf16 and torch.autocast's loss,
    ``validate``, threads, special values, and fp32 left as it was.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import autocast_mlp_loss, build_c_library, mlp
from test_cuda_mma import bf16, special_floats
from test_cuda_precision import (
    ACTS,
    KINDS,
    product_graphs,
    rel,
    rounded_reference,
    rounded_step_reference,
)
from test_special_values import mismatch, plant

import lincompile as lc
from lincompile.backends import c_tiles
from lincompile.backends.reference import ReferenceExecutable
from lincompile.backends.render import render

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

NATIVE = ["-O2", "-march=native"]
#: build name -> (flags, the kernel it must run on, the CPU flag it needs)
BUILDS = {
    "amx": (NATIVE, "amx", "amx_bf16"),
    "avx512-bf16": ([*NATIVE, "-mno-amx-tile", "-mno-amx-bf16", "-mno-amx-int8"],
                    "avx512-bf16", "avx512_bf16"),
    # AMX with its operands rounded by integer code (no AVX512-BF16 conversions)
    "amx-no-avx512-bf16": ([*NATIVE, "-mno-avx512bf16"], "amx", "amx_bf16"),
    "portable": (["-O2", "-march=x86-64-v3"], "portable", None),
}
#: the builds the compiled graphs are checked on
GRAPH_BUILDS = ["amx", "avx512-bf16", "portable"]
CFLAGS = {name: ["-O3", *flags[1:], "-std=c99"] for name, (flags, _, _) in BUILDS.items()}
WRAP = "\n".join(f"""
void t_{lay}(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, const float *S, float *C, int ldc, const float *bias,
             int act, float *pack, int threads) {{
    if (S == C)
        lc_gemm_bf16_{lay}(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, act, pack,
                          threads);
    else
        lc_gemm_bf16_{lay}_from(M, N, K, alpha, A, lda, B, ldb, beta, S, C, ldc, bias, act,
                               pack, threads);
}}""" for lay in KINDS) + """
size_t t_pack(long M, long N, long K, int threads) {
    return lc_gemm_bf16_pack_floats(M, N, K, threads);
}
const char *t_kernel(void) { return lc_gemm_bf16_kernel_name(); }
"""
#: (M, N, K): one of everything, odd K, N off 16 and 32, rows off 16 and 32, K off 32,
#: K = 0 (only the epilogue), and sizes above the 1 MFLOP where threads start
SHAPES = [(1, 1, 1), (1, 17, 3), (3, 33, 5), (16, 16, 32), (17, 31, 33), (33, 48, 64),
          (40, 21, 1), (5, 7, 0), (31, 65, 97), (130, 97, 100), (64, 130, 129)]


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for ln in text.splitlines() if ln.startswith("flags") for f in ln.split()[2:]}


def x86() -> bool:
    return "__x86_64__" in c_tiles._predefined(c_tiles.compiler(), ("-O2",))


def need(name: str) -> None:
    """Skip (with the reason) where this host cannot run build ``name``'s kernel."""
    if not x86():
        pytest.skip("the bf16 builds here are x86-64 builds")
    flag = BUILDS[name][2]
    if flag and flag not in cpu_flags():
        pytest.skip(f"this host has no {flag} (the {name} kernel)")


@pytest.fixture(scope="module", params=list(BUILDS))
def lib(request, tmp_path_factory):
    name = request.param
    need(name)
    flags = [*BUILDS[name][0], "-fopenmp"]
    tiles = c_tiles.gemm_tiles(flags, tune=False)
    src = render("c/gemm.c.j2", **tiles) + "\n" + render("c/gemm_bf16.c.j2", ncp=2) + WRAP
    so = build_c_library(src, flags, tmp_path_factory.mktemp(name))
    so.t_pack.restype, so.t_pack.argtypes = ctypes.c_size_t, [ctypes.c_long] * 3 + [
        ctypes.c_int]
    so.t_kernel.restype = ctypes.c_char_p
    kernel = so.t_kernel().decode()
    if name.startswith("amx") and kernel != "amx":
        pytest.skip(f"the kernel refused this process AMX tile data (runs {kernel})")
    assert kernel == BUILDS[name][1]
    return name, so


def gemm(so, lay, M, N, K, A, B, alpha=1.0, beta=0.0, S=None, C=None, bias=None, act=0,
         threads=1) -> np.ndarray:
    """One lc_gemm_bf16 call on numpy operands (natural layouts, pack allocated here)."""
    C = np.full((M, N), np.nan, np.float32) if C is None else C
    S = C if S is None else S
    floats = so.t_pack(M, N, K, threads)
    buf = np.full(floats + 16, np.nan, np.float32)
    pack = buf[(-buf.ctypes.data % 64) // 4:]
    p = lambda x: None if x is None else ctypes.c_void_p(x.ctypes.data)
    getattr(so, f"t_{lay}")(M, N, K, ctypes.c_float(alpha), p(A), max(A.shape[1], 1), p(B),
                            max(B.shape[1], 1), ctypes.c_float(beta), p(S), p(C), N, p(bias),
                            act, p(pack), threads)
    return C


def operands(rng, lay, M, N, K):
    ta, tb = KINDS[lay]
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return (f(K, M) if ta else f(M, K)), (f(N, K) if tb else f(K, N))


def reference(lay, A, B):
    """float64 op(A) op(B) of the operands rounded to bf16 (ties to even)."""
    ta, tb = KINDS[lay]
    a, b = bf16(A).astype(np.float64), bf16(B).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (a.T if ta else a) @ (b.T if tb else b)


# ------------------------------------------------------------------- (a) the routines
@pytest.mark.parametrize("lay", list(KINDS))
def test_layouts_at_tile_edges(lib, lay):
    name, so = lib
    rng = np.random.default_rng(1)
    for i, (M, N, K) in enumerate(SHAPES):
        A, B = operands(rng, lay, M, N, K)
        alpha, beta, act = [(1.0, 0.0, 0), (0.5, 1.0, 1), (-2.0, 0.25, 2), (1.0, 0.0, 3)][i % 4]
        bias = rng.standard_normal(N).astype(np.float32) if i % 2 else None
        c0 = rng.standard_normal((M, N)).astype(np.float32)
        got = gemm(so, lay, M, N, K, A, B, alpha, beta, C=c0.copy() if beta else None,
                   bias=bias, act=act)
        y = alpha * reference(lay, A, B) + (beta * c0 if beta else 0)
        want = ACTS[act](y + (bias if bias is not None else 0))
        assert rel(got, want) <= 1e-5, f"{name} {lay} {M}x{N}x{K}: {rel(got, want):.2e}"
        for threads in (2, 3):
            again = gemm(so, lay, M, N, K, A, B, alpha, beta, C=c0.copy() if beta else None,
                         bias=bias, act=act, threads=threads)
            assert np.array_equal(got, again, equal_nan=True), \
                f"{name}: {threads} threads differ from 1 at {lay} {M}x{N}x{K}"
    # the bound can fail: the product of the unrounded operands is farther than 1e-4
    A, B = operands(np.random.default_rng(0), lay, 40, 40, 64)
    ta, tb = KINDS[lay]
    exact = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B)
    assert rel(gemm(so, lay, 40, 40, 64, A, B), exact) > 1e-4


@pytest.mark.parametrize("lay", list(KINDS))
def test_from_starts_from_another_matrix(lib, lay):
    """``_from`` (the fused SGD update P.next = P − lr·dW): C = alpha·AB + beta·S with S
    left as it was; K off the tile edges."""
    name, so = lib
    rng = np.random.default_rng(2)
    for M, N, K in [(3, 17, 5), (37, 45, 29), (64, 70, 131)]:
        A, B = operands(rng, lay, M, N, K)
        s0 = rng.standard_normal((M, N)).astype(np.float32)
        S = s0.copy()
        got = gemm(so, lay, M, N, K, A, B, -0.5, 1.0, S=S)
        assert rel(got, s0 - 0.5 * reference(lay, A, B)) <= 1e-5, (name, lay, M, N, K)
        assert np.array_equal(S, s0)


def test_rounding_ties_nan_and_inf(lib):
    """bf16(x) · 1 is bf16(x) exactly: ties go to even, NaN stays NaN, ±Inf stays ±Inf,
    rounding past the largest bf16 gives Inf, as torch rounds. (The fast kernels treat
    bf16 subnormals as zero, as AMX and AVX512-BF16 do; they are left out.)"""
    name, so = lib
    x = special_floats(np.random.default_rng(7))
    for lay in KINDS:   # A holds x as a column (nt/nn) or row (tn/tt): both packing paths
        ta, tb = KINDS[lay]
        A = x[None, :].copy() if ta else x[:, None].copy()
        B = np.ones((1, 1), np.float32)
        got = gemm(so, lay, x.size, 1, 1, A, B)[:, 0]
        want = bf16(x)
        normal = ~(np.abs(want) < np.float32(2.0**-126)) | (name == "portable")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        keep = normal & ~np.isnan(want)
        np.testing.assert_array_equal(got[keep], want[keep], err_msg=f"{name} {lay}")
        # and the weights' side: x as a row of B (contiguous along n for nn/tn, along k
        # for nt/tt)
        Bx = x[:, None].copy() if tb else x[None, :].copy()
        got = gemm(so, lay, 1, x.size, 1, np.ones((1, 1), np.float32), Bx)[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got[keep], want[keep], err_msg=f"{name} {lay} B")


@pytest.mark.parametrize("lay", list(KINDS))
def test_nan_and_inf_propagate_like_numpy(lib, lay):
    name, so = lib
    rng = np.random.default_rng(6)
    M, N, K = 20, 35, 40
    A, B = operands(rng, lay, M, N, K)
    A.flat[[3, 77, 200]] = [np.nan, np.inf, -np.inf]
    B.flat[[5, 400]] = [np.inf, np.nan]
    bias = np.zeros(N, np.float32)
    bias[2] = np.nan
    got = gemm(so, lay, M, N, K, A, B, bias=bias, act=1)
    want = ACTS[1](reference(lay, A, B) + bias)
    assert mismatch(got, want) is None, (name, lay, mismatch(got, want))


# --------------------------------------------------------------- (b) compiled graphs
def compiled(g: lc.Graph, build: str, threads: int = 1):
    return lc.compile(g, "c", precision="bf16", threads=threads, cflags=CFLAGS[build])


@pytest.mark.parametrize("build", GRAPH_BUILDS)
def test_compiled_products_against_rounded_operands(build):
    need(build)
    graphs = product_graphs()
    head = lc.Graph("head")   # 10 columns: the fp32 code takes lc_small_nt here
    head.output(head.apply("linear", [head.input("x", ["N", 37]), head.input("w", [10, 37]),
                                      head.input("b", [10])]), name="y")
    for kind, g in [*graphs.items(), ("head", head.verify())]:
        exe = compiled(g, build)
        assert exe.precision == "bf16" and "lc_gemm_bf16_" in exe.source()
        assert exe.bf16_kernel in (BUILDS[build][1], "portable")   # amx refused: portable
        for n in (1, 33, 70):
            feeds = lc.random_feeds(g, n, seed=n)
            got = exe.run(feeds)["y"]
            if kind == "head":
                ref = bf16(feeds["x"]).astype(np.float64) @ bf16(feeds["w"]).T + feeds["b"]
            else:
                ref = rounded_reference(g, feeds, "bf16")
            assert rel(got, ref) <= 1e-5, f"{build} {kind} N={n}: {rel(got, ref):.2e}"


def step(act: str, opt, grads: bool = False):
    g = lc.training_graph(mlp((64, 96, 48, 10), act=act, seed=1), loss="cross-entropy",
                          optimizer=opt, emit_grads=grads)
    feeds = lc.random_feeds(g, 45, seed=2)
    feeds.update({k: np.asarray(v, feeds[k].dtype) for k, v in g.initial_state.items()})
    return g, feeds


def errors(got: dict, g: lc.Graph, feeds: dict) -> tuple[dict, dict]:
    """Each float output's error against float64 and against the rounded reference."""
    ref = ReferenceExecutable(g, "float64").run(feeds)
    same = rounded_step_reference(g, feeds, "bf16")
    fl = [k for k, r in ref.items() if r.dtype.kind == "f"]
    return {k: rel(got[k], ref[k]) for k in fl}, {k: rel(got[k], same[k]) for k in fl}


@pytest.mark.parametrize("build", GRAPH_BUILDS)
def test_training_step_fused_sgd(build):
    """tanh and plain SGD (the dW products fused into the updates): every output within
    1e-3 of the rounded reference and 2e-2 of float64, measurably not fp32; 2 threads
    bitwise equal to 1."""
    need(build)
    g, feeds = step("tanh", lc.SGD(0.1))
    exe = compiled(g, build)
    body = exe.source().split("lc_layout_train_step(size_t")[1]   # the entry point
    assert "lc_gemm_bf16_tn_from(" in body and not re.search(r"lc_(gemm|small)_n", body)
    got = exe.run(feeds)
    e64, same = errors(got, g, feeds)
    assert max(same.values()) <= 1e-3, same
    assert max(e64.values()) <= 2e-2, e64
    assert max(e64.values()) > 1e-4, "the products were not computed in bf16"
    two = compiled(g, build, threads=2).run(feeds)
    for k in got:
        assert np.array_equal(got[k], two[k]), f"{build}: {k} differs on 2 threads"


def adam_step():
    return step("relu", lc.Adam(1e-3), grads=True)


def test_adam_step_against_cuda_cpu_and_torch_autocast():
    """relu, cross-entropy and Adam, gradients out: c in bf16 against the same step on
    cuda-cpu in bf16 (within 1e-5: both round the same operands and sum in float32, in
    other orders; measured 1e-7) and against torch.autocast(cpu, bfloat16): its loss
    within 5e-4 relative (autocast also rounds each product's output to bf16, which
    lincompile keeps in float32; measured 3e-5) and its gradients as far from float64 as
    ours within 25 %."""
    g, feeds = adam_step()
    ours = lc.compile(g, "c", precision="bf16", threads=1).run(feeds)
    emu = lc.compile(g, "cuda-cpu", precision="bf16").run(feeds)
    for k, r in ours.items():
        if r.dtype.kind == "f":
            assert rel(r, emu[k]) <= 1e-5, f"{k}: {rel(r, emu[k]):.2e}"
    e64, same = errors(ours, g, feeds)
    assert max(same.values()) <= 1e-3, same
    torch = pytest.importorskip("torch")
    P = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()
         if k.startswith("fc") and "." in k and k.count(".") == 1}
    loss = autocast_mlp_loss(torch, feeds["x"], feeds["target"], P)
    loss.backward()
    theirs = float(loss.detach())
    assert abs(float(ours["loss"]) - theirs) <= 5e-4 * abs(theirs), (ours["loss"], theirs)
    ref = ReferenceExecutable(g, "float64").run(feeds)
    for k in ref:
        if k.endswith(".grad"):
            t = rel(P[k[:-len(".grad")]].grad.numpy(), ref[k])
            assert e64[k] <= 1.25 * t + 1e-3, f"{k}: {e64[k]:.2e} vs autocast {t:.2e}"


def test_validate_and_precision_check():
    """validate holds target c in bf16 to 2e-2: a model and an Adam step. (Gradients as
    outputs of validate's random feeds pass 2e-2 from float64 in bf16, on cuda-cpu the
    same: they are checked against the rounded reference above instead.)"""
    g, _ = step("tanh", lc.Adam(1e-3))
    for graph in (g, mlp((64, 96, 48, 10), seed=1)):
        report = lc.validate(graph, ["reference", "c"], batch=9, precision="bf16")
        assert report.ok, str(report)
    with pytest.raises(lc.CompileError, match="precision must be one of fp32, bf16 on "
                                              "target c, got 'tf32'"):
        lc.compile(g, "c", precision="tf32")
    with pytest.raises(lc.CompileError, match="precision must be one of"):
        lc.compile(g, "c", precision="fp16")


def test_fp32_stays_as_it_was():
    g, feeds = step("tanh", lc.SGD(0.1))
    exe = lc.compile(g, "c", threads=1)
    assert exe.precision == "fp32" and exe.bf16_kernel is None
    assert "bf16" not in exe.source()
    assert exe.source() == lc.compile(g, "c", threads=1, precision="fp32").source()
    e64, _ = errors(exe.run(feeds), g, feeds)
    assert max(e64.values()) <= 1e-5, e64


def test_special_values_through_a_bf16_step():
    """NaN/±Inf planted in the inputs and weights of a training step: they land where the
    float64 reference (with the products' operands rounded to bf16) has them."""
    g, feeds = step("relu", lc.SGD(0.05, 0.9), grads=True)
    exe = lc.compile(g, "c", precision="bf16", threads=1)
    rng = np.random.default_rng(3)
    for case in range(3):
        f = dict(feeds)
        f["x"] = plant(rng, f["x"], ("nan", "inf", "-inf"), 3)
        f["fc2.weight"] = plant(rng, f["fc2.weight"], ("inf",), 1 + case)
        got = exe.run(f)
        same = rounded_step_reference(g, f, "bf16")
        for k, r in same.items():
            if r.dtype.kind == "f":
                assert mismatch(got[k], r, 1e-3) is None, (case, k, mismatch(got[k], r, 1e-3))


# ---------------------------------------------------------------------------- (c) CLI
def test_cli_bf16_on_target_c(tmp_path):
    """`compile --target c --precision bf16` writes sources whose library says which bf16
    kernel it runs and whose step matches lc.compile's; validate and train take it too."""
    import sys

    if shutil.which("make") is None:
        pytest.skip("needs make")
    m = mlp((12, 9, 3), seed=4, name="tiny")
    lc.save_onnx(m, tmp_path / "tiny.onnx")
    cli = [sys.executable, "-m", "lincompile"]
    r = subprocess.run([*cli, "compile", tmp_path / "tiny.onnx", "--target", "c", "--precision",
                        "bf16", "-o", tmp_path / "out"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "model_bf16_kernel" in r.stdout
    b = subprocess.run(["make", "-C", str(tmp_path / "out")], capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    lib = ctypes.CDLL(str(tmp_path / "out" / "libmodel.so"))
    lib.model_bf16_kernel.restype = ctypes.c_char_p
    assert lib.model_bf16_kernel().decode() in ("amx", "avx512-bf16", "portable")
    r = subprocess.run([*cli, "validate", tmp_path / "tiny.onnx", "--targets", "reference,c",
                        "--precision", "bf16", "--batch", "5"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0.02 for bf16 on the C and CUDA targets" in r.stdout
