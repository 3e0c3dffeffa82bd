"""templates/c/gemm.c.j2 on its own: all four layouts, odd shapes that cross every cache
and register block, alpha/beta, bias and activation epilogues, every register tile the
generator picks (AVX-512, AVX2 through ``-march=x86-64-v3``, 4-wide, plain C) and both
sides of each threshold (dot products or packed B for nt, B in place or packed for nn/tn),
and OpenMP results bitwise equal to one thread — against numpy float64. Also the tile
choice and the threshold measurement (lincompile/backends/c_tiles.py, c_tune.py)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import SANITIZE, build_c_library, sanitizer_missing

from lincompile.backends import c_tiles, c_tune
from lincompile.backends.c import TILES
from lincompile.backends.render import render

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

BIG = 1 << 30
TINY = {"mr": 2, "nr": 16, "kc": 8, "mc": 4, "nc": 32, "direct_max_m": 4,
        "direct_max_kn": BIG, "dot_max_m": 4, "dot_max_k": 24, "dot_long_max_m": 2,
        "dot_aliased_max_m": 1, "far_floats": 64, "pack_a_min_n": 32, "row_kernels": 1}
#: every path at once: nt by dot products (fetching B ahead wherever K allows), nn/tn with
#: B in place, at any size
UNPACKED = {**TILES, "direct_max_m": BIG, "direct_max_kn": BIG, "dot_max_m": BIG,
            "dot_long_max_m": BIG, "dot_aliased_max_m": BIG, "far_floats": 0}
#: everything packed (no dot products, no A or B in place; B in place only where two slivers
#: of A hold every row), C fetched ahead wherever K is short
PACKED = {**TILES, "direct_max_m": 0, "dot_max_m": 0, "dot_long_max_m": 0, "row_kernels": 0,
          "dot_aliased_max_m": 0, "pack_a_min_n": 1, "far_floats": 0}
V3 = ["-O2", "-march=x86-64-v3"]
NATIVE = ["-O2", "-march=native"]
#: name -> (tiles, flags); tiles None: what the generator picks for the flags (untuned)
BUILDS = {
    "tiny": (TINY, ["-O2", "-fopenmp"]),
    "picked": (None, NATIVE),
    "packed": (PACKED, [*NATIVE, "-fopenmp"]),
    "unpacked": (UNPACKED, [*NATIVE, "-fopenmp"]),
    "12x32": ({**PACKED, "mr": 12, "nr": 32, "kc": 96, "mc": 36, "nc": 64, "row_kernels": 5},
              NATIVE),
    "x86-64-v3": (None, [*V3, "-fopenmp"]),
    "vec4": (None, ["-O2"]),
    "portable": (None, ["-O2", "-DLC_GEMM_PORTABLE"]),
}
WRAP = "\n".join(f"""
void t_{lay}(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc, const float *bias, int act, int threads) {{
    lc_gemm_{lay}(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, act, pack, threads);
}}
void f_{lay}(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, const float *S, float *C, int ldc, const float *bias,
             int act, int threads) {{
    lc_gemm_{lay}_from(M, N, K, alpha, A, lda, B, ldb, beta, S, C, ldc, bias, act, pack,
                      threads);
}}""" for lay in ("nt", "nn", "tn", "tt"))
PACK_WRAP = "\n".join(f"""
void p_{lay}(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
             float *pk) {{
    lc_gemm_{lay}(M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N, NULL, 0, pk, 1);
}}""" for lay in ("nt", "nn", "tn", "tt")) + """
size_t pack_floats(long M, long N, long K) { return lc_gemm_pack_floats(M, N, K); }"""
SMALL_WRAP = """
void t_small(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc, const float *bias, int act, int threads) {
    lc_small_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, act, NULL, threads);
}"""
#: (M, N, K); 13 x 64, 15 x 96 and 3 x 80: a last partial sliver of rows (5 and 7 rows: two
#: row kernels with MR = 8; 3) in column tiles of 48 and of 16 or 32; one row (nn/tn read B
#: row by row) over two K blocks with a partial vector, and over two runs of B's row; fewer
#: than 16 columns (tn/tt compute C transposed), over two K blocks and over two MC blocks;
#: nn with few columns by dot products of rows (1, 2, 8, 10 and 11 columns: blocks of 3 with
#: columns to spare and without; rows past a block of 8 or 4, K past a vector, at its
#: bound, and a multiple of 4 KiB); K of 1 to 4 (nn/tn along the rows of C: odd rows, a
#: last partial vector, whole vectors only, two column blocks)
SHAPES = [(1, 1, 1), (3, 17, 5), (7, 33, 64), (37, 45, 29), (65, 130, 9), (130, 20, 300),
          (300, 70, 17), (64, 128, 784), (9, 49, 515), (17, 97, 33), (41, 530, 21),
          (20, 400, 300), (13, 64, 40), (15, 96, 30), (3, 80, 20), (1, 37, 530),
          (1, 4100, 3), (40, 5, 400), (1600, 3, 9), (1001, 1, 37), (6, 2, 16),
          (203, 11, 170), (37, 10, 131), (29, 8, 70), (9, 3, 1024), (37, 45, 3),
          (2, 16, 2), (6, 4100, 1), (130, 1500, 4)]


def x86() -> bool:
    return "__x86_64__" in c_tiles._predefined(c_tiles.compiler(), ("-O2",))


@pytest.fixture(scope="module", params=list(BUILDS))
def lib(request, tmp_path_factory):
    name = request.param
    tiles, flags = BUILDS[name]
    if name in ("x86-64-v3", "vec4") and not x86():
        pytest.skip("an x86-64 build")
    if name == "x86-64-v3":
        assert c_tiles.target_isa(flags) == "avx2"
    tiles = tiles or c_tiles.gemm_tiles(flags, tune=False)
    return name, "-fopenmp" in flags, build_gemm(tiles, flags, tmp_path_factory.mktemp(name))


def build_gemm(tiles, flags, folder):
    """templates/c/gemm.c.j2 and small_gemm.c.j2 rendered with ``tiles``, behind the t_/f_
    wrappers, built with ``flags`` in ``folder``."""
    src = (render("c/gemm.c.j2", **tiles) + "\nstatic float pack[1 << 22];\n" + WRAP + PACK_WRAP
           + "\n#define LC_UNUSED __attribute__((unused))\n" + render("c/small_gemm.c.j2")
           + SMALL_WRAP)
    return build_c_library(src, flags, folder)


def call(lib, lay, a, b, c, alpha, beta, bias, act, threads=1):
    M, N = c.shape
    K = a.shape[0] if lay[0] == "t" else a.shape[1]
    p = lambda x: x.ctypes.data_as(ctypes.c_void_p) if x is not None else None
    getattr(lib, f"t_{lay}")(M, N, K, ctypes.c_float(alpha), p(a), a.shape[1], p(b), b.shape[1],
                             ctypes.c_float(beta), p(c), c.shape[1], p(bias), act, threads)


def expected(lay, a, b, c0, alpha, beta, bias, act):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    y = alpha * ((a64.T if lay[0] == "t" else a64) @ (b64.T if lay[1] == "t" else b64))
    y = y + (beta * c0 if beta else 0) + (bias if bias is not None else 0)
    return [y, np.maximum(y, 0), 1 / (1 + np.exp(-y)), np.tanh(y)][act]


def check_against_float64(so, kind, lay, shape, i, rng, threads=()):
    """One ``lay`` product (``small``: lc_small_nt, an nt product) of ``shape`` on random
    operands, with the i-th alpha/beta/activation of a cycle of four and a bias on odd i,
    against numpy float64; and, for each count in ``threads``, bitwise equal to one thread."""
    M, N, K = shape
    ta, tb = "nt" if lay == "small" else lay
    a = rng.standard_normal((K, M) if ta == "t" else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb == "t" else (K, N)).astype(np.float32)
    alpha, beta, act = [(1.0, 0.0, 0), (0.5, 1.0, 1), (-2.0, 0.25, 2), (1.0, 0.0, 3)][i % 4]
    bias = rng.standard_normal(N).astype(np.float32) if i % 2 else None
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    c = c0.copy() if beta else np.full((M, N), np.nan, np.float32)
    call(so, lay, a, b, c, alpha, beta, bias, act)
    want = expected(ta + tb, a, b, c0, alpha, beta, bias, act)
    err = np.abs(c - want).max() / (np.abs(want).max() + 1e-30)
    assert err < 1e-5 * max(1, np.sqrt(K) / 4), f"{kind} {lay} {M}x{N}x{K}: {err:.1e}"
    for n in threads:
        c2 = c0.copy() if beta else np.full((M, N), np.nan, np.float32)
        call(so, lay, a, b, c2, alpha, beta, bias, act, threads=n)
        assert np.array_equal(c, c2), f"{kind}: {n} threads differ from 1: {lay} {M}x{N}x{K}"


@pytest.mark.parametrize("lay", ["nt", "nn", "tn", "tt"])
def test_layouts_against_float64(lib, lay):
    kind, openmp, so = lib
    rng = np.random.default_rng(0)
    for i, shape in enumerate(SHAPES):
        check_against_float64(so, kind, lay, shape, i, rng, (2, 3) if openmp else ())


def test_small_nt_against_float64(lib):
    """templates/c/small_gemm.c.j2, the nt product for at most 16 output columns (dot
    products of the GEMM core with AVX-512, a loop elsewhere): K of 0, under, at and past
    a 16-float vector, with every epilogue."""
    kind, _, so = lib
    rng = np.random.default_rng(3)
    for i, shape in enumerate([(1, 1, 1), (3, 10, 5), (64, 10, 128), (37, 16, 29),
                               (9, 3, 515), (130, 7, 300), (5, 10, 0), (17, 2, 16)]):
        check_against_float64(so, kind, lay="small", shape=shape, i=i, rng=rng)


@pytest.mark.parametrize("lay", ["nt", "nn", "tn", "tt"])
def test_from_starts_from_another_matrix(lib, lay):
    """``lc_gemm_XX_from``: C = alpha op(A) op(B) + beta S, S left as it was (the fused SGD
    update P.next = P - lr dW); with S = C it is the plain routine."""
    kind, _, so = lib
    rng = np.random.default_rng(2)
    for M, N, K in [(3, 17, 5), (37, 45, 29), (64, 128, 784), (9, 530, 21)]:
        a = rng.standard_normal((K, M) if lay[0] == "t" else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if lay[1] == "t" else (K, N)).astype(np.float32)
        src = rng.standard_normal((M, N)).astype(np.float32)
        s0, c = src.copy(), np.full((M, N), np.nan, np.float32)
        p = lambda x: x.ctypes.data_as(ctypes.c_void_p)
        getattr(so, f"f_{lay}")(M, N, K, ctypes.c_float(-0.5), p(a), a.shape[1], p(b),
                                b.shape[1], ctypes.c_float(1.0), p(src), p(c), N, None, 0, 2)
        want = expected(lay, a, b, s0, -0.5, 1.0, None, 0)
        err = np.abs(c - want).max() / np.abs(want).max()
        assert err < 1e-5 * max(1, np.sqrt(K) / 4), f"{kind} {lay} {M}x{N}x{K}: {err:.1e}"
        assert np.array_equal(src, s0)
        inplace = src.copy()
        getattr(so, f"f_{lay}")(M, N, K, ctypes.c_float(-0.5), p(a), a.shape[1], p(b),
                                b.shape[1], ctypes.c_float(1.0), p(inplace), p(inplace), N,
                                None, 0, 2)
        assert np.array_equal(inplace, c), f"{kind} {lay}: S = C differs from S != C"


@pytest.mark.parametrize("lay", ["nt", "nn", "tn", "tt"])
def test_columns_past_n_are_left_alone(lib, lay):
    """With a row stride past N, every path (a last partial vector stored by masked moves,
    padded copies, short K along the rows, dot products) writes only the N columns of each
    row, from S = C as well as into a fresh C."""
    kind, _, so = lib
    rng = np.random.default_rng(5)
    for M, N, K in [(37, 45, 29), (16, 100, 10), (9, 20, 3), (300, 5, 40), (3, 37, 530),
                    (2, 1, 1), (13, 70, 2)]:
        a = rng.standard_normal((K, M) if lay[0] == "t" else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if lay[1] == "t" else (K, N)).astype(np.float32)
        for beta in (0.0, 0.5):
            wide = np.full((M, N + 7), 12345.0, np.float32)
            c0 = rng.standard_normal((M, N)).astype(np.float32)
            wide[:, :N] = c0 if beta else np.nan
            p = lambda x: x.ctypes.data_as(ctypes.c_void_p)
            getattr(so, f"t_{lay}")(M, N, K, ctypes.c_float(1.0), p(a), a.shape[1], p(b),
                                    b.shape[1], ctypes.c_float(beta), p(wide), N + 7, None,
                                    0, 1)
            want = expected(lay, a, b, c0, 1.0, beta, None, 0)
            err = np.abs(wide[:, :N] - want).max() / np.abs(want).max()
            assert err < 1e-5 * max(1, np.sqrt(K) / 4), f"{kind} {lay} {M}x{N}x{K}: {err:.1e}"
            assert (wide[:, N:] == 12345.0).all(), f"{kind} {lay} {M}x{N}x{K}: wrote past N"


SANITIZED_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
static float *filled(size_t n) {   /* exactly n floats: ASan sees a read one past */
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)(i % 7) - 3.0f;
    return p;
}
int main(void) {
    static const int shapes[][3] = {SHAPES};
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
        int M = shapes[q][0], N = shapes[q][1], K = shapes[q][2];
        for (int lay = 0; lay < 4; lay++)
            for (int v = 0; v < 6; v++) {   /* beta 0 / 0.5 x S apart / S = C x 1, 2 threads */
                int ta = lay >= 2, tb = lay % 2 == 0, threads = v < 4 ? 1 : 2;
                float beta = v % 2 ? 0.5f : 0.0f;
                float *A = filled((size_t)M * K), *B = filled((size_t)K * N);
                float *C = filled((size_t)M * N), *S = v % 4 < 2 ? filled((size_t)M * N) : C;
                float *pk = filled((size_t)threads * lc_gemm_pack_floats(M, N, K));
                int lda = ta ? M : K, ldb = tb ? K : N;
                void (*f)(int, int, int, float, const float *, int, const float *, int, float,
                          const float *, float *, int, const float *, int, float *, int) =
                    lay == 0 ? lc_gemm_nt_from : lay == 1 ? lc_gemm_nn_from
                    : lay == 2 ? lc_gemm_tt_from : lc_gemm_tn_from;
                f(M, N, K, 1.0f, A, lda, B, ldb, beta, S, C, N, NULL, 0, pk, threads);
                if (S != C) free(S);
                free(A); free(B); free(C); free(pk);
            }
    }
    puts("ok");
    return 0;
}
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ASan/UBSan runs are set up for Linux")
@pytest.mark.parametrize("flags", [NATIVE, V3], ids=["native", "x86-64-v3"])
def test_every_path_stays_within_its_operands_under_sanitizers(tmp_path, flags):
    """Every layout and path (the shapes above, each operand and the pack allocated at its
    exact size) with beta 0 and not, S apart from C and S = C, on one and two threads: no
    read or write past any of them, no undefined behaviour (ASan, UBSan)."""
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    why = sanitizer_missing(tmp_path, env)
    if why:
        pytest.skip(f"no sanitizer runtime here: {why}")
    if flags is V3 and not x86():
        pytest.skip("an x86-64 build")
    shapes = [*SHAPES, (2003, 7, 150), (500, 700, 3), (12, 900, 300), (300, 5, 40)]
    src = (render("c/gemm.c.j2", **c_tiles.gemm_tiles(flags, tune=False))
           + SANITIZED_DRIVER.replace("SHAPES", ", ".join(f"{{{m}, {n}, {k}}}"
                                                          for m, n, k in shapes)))
    (tmp_path / "g.c").write_text(src)
    exe = tmp_path / "g"
    opt = ["-O1" if f == "-O2" else f for f in flags]   # the same paths, built 2-3x faster
    subprocess.run(["cc", *opt, "-g", "-std=c99", "-fopenmp", *SANITIZE, str(tmp_path / "g.c"),
                    "-o", str(exe), "-lm"], check=True, capture_output=True, text=True)
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_products_stay_within_their_pack_floats(lib):
    """Each layout uses at most ``lc_gemm_pack_floats(M, N, K)`` floats of its pack area (what
    the generated workspace holds), narrow products included, whichever way they are
    computed: the floats after it are left as they were."""
    kind, _, so = lib
    so.pack_floats.restype = ctypes.c_size_t
    so.pack_floats.argtypes = [ctypes.c_long] * 3
    rng = np.random.default_rng(4)
    p = lambda x: x.ctypes.data_as(ctypes.c_void_p)
    for M, N, K in [(2000, 3, 500), (1700, 15, 400), (3, 2000, 500), (40, 5, 400), (1, 37, 530),
                    (300, 70, 17), (9, 11, 5000), (64, 8, 3000)]:
        floats = so.pack_floats(M, N, K)
        for lay in ("nt", "nn", "tn", "tt"):
            a = rng.standard_normal((K, M) if lay[0] == "t" else (M, K)).astype(np.float32)
            b = rng.standard_normal((N, K) if lay[1] == "t" else (K, N)).astype(np.float32)
            pk = np.full(floats + 4096, 7.0, np.float32)
            c = np.full((M, N), np.nan, np.float32)
            getattr(so, f"p_{lay}")(M, N, K, p(a), a.shape[1], p(b), b.shape[1], p(c), p(pk))
            assert (pk[floats:] == 7.0).all(), f"{kind} {lay} {M}x{N}x{K}: past its pack area"
            want = expected(lay, a, b, None, 1.0, 0.0, None, 0)
            err = np.abs(c - want).max() / np.abs(want).max()
            assert err < 1e-5 * max(1, np.sqrt(K) / 4), f"{kind} {lay} {M}x{N}x{K}: {err:.1e}"


def test_big_product_is_thread_count_independent(lib):
    """A product large enough to be split over threads (≥ 2 MFLOP) in every layout, also
    starting from C, with column strips that start inside a register tile; and dot
    products of rows split both ways (few columns: by rows; nt with few rows: by columns),
    and products of a short K along the rows of C. The thread count is ignored
    by a build without OpenMP."""
    kind, _, so = lib
    rng = np.random.default_rng(1)
    for lay, beta, (M, N, K) in (("nt", 0.0, (100, 150, 90)), ("nn", 0.0, (100, 150, 90)),
                                 ("tn", 0.0, (100, 150, 90)), ("tn", 0.5, (100, 150, 90)),
                                 ("tt", 0.5, (100, 150, 90)), ("nn", 0.5, (2003, 7, 150)),
                                 ("nt", 0.0, (12, 900, 300)), ("nt", 0.5, (2003, 5, 300)),
                                 ("nn", 0.5, (500, 700, 3)),
                                 ("tn", 0.0, (400, 900, 2))):
        a = rng.standard_normal((K, M) if lay[0] == "t" else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if lay[1] == "t" else (K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        c0 = rng.standard_normal((M, N)).astype(np.float32)
        outs = []
        for threads in (1, 2, 4):
            c = c0.copy() if beta else np.full((M, N), np.nan, np.float32)
            call(so, lay, a, b, c, 1.0, beta, bias, 1, threads)
            outs.append(c)
        want = expected(lay, a, b, c0, 1.0, beta, bias, 1)
        assert np.abs(outs[0] - want).max() < 1e-4 * np.abs(want).max()
        assert all(np.array_equal(outs[0], o) for o in outs[1:]), f"{kind} {lay}"


# --------------------------------------------------------------------------- tile choice
def test_tiles_follow_the_target_isa():
    if not x86():
        pytest.skip("an x86-64 compiler")
    assert c_tiles.target_isa(V3) == "avx2"
    assert c_tiles.target_isa(["-O2", "-march=x86-64-v4"]) == "avx512"
    assert c_tiles.target_isa(["-O2", "-march=x86-64"]) == "vec4"
    assert c_tiles.target_isa(["-O2", "-DLC_GEMM_PORTABLE"]) == "scalar"
    assert c_tiles.target_isa(["-O2", "-fno-such-flag-lincompile"]) == "scalar"
    t = c_tiles.gemm_tiles(V3, tune=False)
    assert (t["mr"], t["nr"]) == c_tiles.REGISTER_TILES["avx2"]
    assert t["nc"] % t["nr"] == 0 and t["mc"] % t["mr"] == 0 and t["nr"] % 16 == 0


def test_blocking_follows_the_cache_sizes(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                             (2, "Unified", "1024K"), (3, "Unified", "32M")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for f, v in (("level", level), ("type", kind), ("size", size)):
            (d / f).write_text(f"{v}\n")
    caches = c_tiles.host_caches.__wrapped__(str(tmp_path))
    assert caches == {"L1": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}
    small = c_tiles.blocking(8, 48, caches)
    big = c_tiles.blocking(8, 48, {**caches, "L1": 48 << 10, "L2": 2 << 20})
    assert 8 * small["kc"] * 4 <= caches["L1"] // 4
    assert small["kc"] * small["nc"] * 4 <= caches["L2"] // 2
    assert big["nc"] > small["nc"] and big["direct_max_kn"] == (2 << 20) // 8
    assert big["far_floats"] == 4 * (2 << 20) // 4   # floats in four times L2
    for b, c in ((small, caches), (big, {"L1": 48 << 10})):   # a dot block's 11 rows in L1
        assert 11 * 4 * b["dot_max_k"] <= c["L1"] < 11 * 4 * (b["dot_max_k"] + 1)
    # a narrow (AVX2) tile: its A and B slivers share three quarters of L1; the wide
    # AVX-512 tile's B sliver streams from L2, only its A sliver is held to a quarter
    for l1 in (32 << 10, 48 << 10):
        narrow = c_tiles.blocking(6, 16, {**caches, "L1": l1})
        assert (6 + 16) * 4 * narrow["kc"] <= l1 * 3 // 4 and narrow["kc"] >= 256
    assert big["kc"] == 384 and c_tiles.blocking(6, 16, {**caches, "L1": 48 << 10})["kc"] == 384
    assert c_tiles.host_caches.__wrapped__(str(tmp_path / "none")) == c_tiles.DEFAULT_CACHES


def test_thresholds_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LINCOMPILE_CACHE", str(tmp_path))
    monkeypatch.delenv("LINCOMPILE_TUNE", raising=False)
    c_tune._MEMO.clear()
    flags = ["-O2", "-march=native"]
    tiles = c_tiles.gemm_tiles(flags)
    path = c_tune.cache_path(flags, tiles)
    saved = json.loads(path.read_text())
    for knob in c_tune.KNOBS:
        assert tiles[knob] == saved[knob] and saved[knob] in (0, *c_tune.ROWS), knob
    # a later build reads the choice back (a planted value shows it is not measured again)
    c_tune._MEMO.clear()
    path.write_text(json.dumps({**saved, "direct_max_m": 3}))
    assert c_tiles.gemm_tiles(flags)["direct_max_m"] == 3
    # warnings, debug info or OpenMP do not change the code measured: the same choice
    same = [*flags, "-Wall", "-Wextra", "-g", "-fopenmp", "-I/somewhere"]
    assert c_tiles.gemm_tiles(same)["direct_max_m"] == 3
    assert c_tune.cache_path(same, tiles) == path
    assert c_tune.cache_path(["-O2", "-march=x86-64-v3"], tiles) != path
    monkeypatch.setenv("LINCOMPILE_TUNE", "0")
    assert c_tiles.gemm_tiles(flags)["direct_max_m"] == c_tiles.DEFAULT_DIRECT_MAX_M
    c_tune._MEMO.clear()


def test_crossing_needs_a_clear_win_so_noise_cannot_move_it():
    """The threshold is the last row count before the unpacked path stops being clearly
    faster; ratios that wobble around 1 (timing noise near the crossing) never extend it."""
    rng = np.random.default_rng(1)
    base = dict(zip(c_tune.ROWS, (0.2, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)))
    picks = set()
    for _ in range(200):
        noisy = {m: r * (1 + rng.uniform(-0.03, 0.03)) for m, r in base.items()}
        picks.add(c_tune._crossing(lambda m: noisy[m], lambda m: 1.0))
    assert picks == {64}
    assert c_tune._crossing(lambda m: 1.0, lambda m: 1.0) == 0
    assert c_tune._crossing(lambda m: 0.5, lambda m: 1.0) == max(c_tune.ROWS)
    # rows that take the unpacked path whatever the threshold (nn/tn: two slivers) are not
    # timed, and count as taken
    timed = []
    assert c_tune._crossing(lambda m: timed.append(m) or 1.0, lambda m: 1.0, always=16) == 16
    assert min(timed) == 32


def test_crossing_judges_each_shape_on_its_own():
    """With a time per shape, rows keep the unpacked path while it is clearly faster at one
    shape and not clearly slower at any: a lead at a narrow layer with a tie at a wide one
    counts (a sum of the two would sit at the margin, and noise would move the choice), a
    lead at one shape bought with a clear loss at another does not."""
    rng = np.random.default_rng(2)
    lead = {1: 0.5, 2: 0.5, 4: 0.6, 8: 0.6, 16: 0.7, 32: 0.8, 64: 0.89, 128: 1.0, 256: 1.2}
    tie = {1: 0.6, 2: 0.6, 4: 0.7, 8: 0.7, 16: 0.8, 32: 0.9, 64: 1.0, 128: 1.1, 256: 1.3}
    picks = set()
    for _ in range(200):
        jitter = lambda: 1 + rng.uniform(-0.02, 0.02)
        picks.add(c_tune._crossing(lambda m: [lead[m] * jitter(), tie[m] * jitter()],
                                   lambda m: [1.0, 1.0]))
    assert picks == {64}
    loss = {**tie, 16: 1.08}   # a clear loss at the second shape from 16 rows on
    assert c_tune._crossing(lambda m: [lead[m], loss[m]], lambda m: [1.0, 1.0]) == 8


def test_thresholds_are_measured_on_aligned_operands(monkeypatch):
    """The measurement's operands and pack area lie on 64-byte lines, as the generated
    code's own buffers do (numpy's large arrays do not, and the dot path's loads then span
    two lines: that would measure it slower than it runs)."""
    seen = []
    real = c_tune.load_library

    def spy(path):   # the timing function, replaced: it records the pointers it is given
        lib = real(path)

        def timed(*args):
            seen.extend(args[4:8])
            return 1e-3
        lib.lc_tune_time = timed
        return lib
    monkeypatch.setattr(c_tune, "load_library", spy)
    flags = ["-O2"]
    c_tune.measure(flags, c_tiles.gemm_tiles(flags, tune=False), dot=False)
    assert seen and all(p % 64 == 0 for p in seen)


def test_long_rows_leave_the_dot_path_at_dot_max_k(tmp_path):
    """nt rows up to dot_max_k long take the dot-product path up to dot_max_m rows; longer
    ones only up to dot_long_max_m, and rows a multiple of 4 KiB apart only up to
    dot_aliased_max_m (here 0: packed); rows shorter than 4 per row of A never: bitwise the
    result of the build that always takes that path (the two paths sum in different
    orders)."""
    flags = ["-O2", "-march=native"]
    if c_tiles.target_isa(flags) != "avx512":
        pytest.skip("the dot-product path needs AVX-512 (this host has none)")
    libs = {}
    for name, tiles in (("dot", UNPACKED), ("packed", PACKED),
                        ("long", {**UNPACKED, "dot_max_k": 64, "dot_long_max_m": 0}),
                        ("aliased", {**UNPACKED, "dot_max_k": 64, "dot_aliased_max_m": 0})):
        (tmp_path / name).mkdir()
        libs[name] = build_gemm(tiles, flags, tmp_path / name)
    rng = np.random.default_rng(3)
    differ = set()
    for k, long, aliased in ((1, "packed", "packed"), (31, "packed", "packed"),
                             (32, "dot", "dot"), (63, "dot", "dot"), (64, "dot", "dot"),
                             (65, "packed", "dot"), (1000, "packed", "dot"),
                             (1024, "packed", "packed"), (2048, "packed", "packed")):
        a = rng.standard_normal((8, k)).astype(np.float32)
        b = rng.standard_normal((37, k)).astype(np.float32)
        out = {}
        for name, so in libs.items():
            out[name] = np.full((8, 37), np.nan, np.float32)
            call(so, "nt", a, b, out[name], 1.0, 0.0, None, 0)
        if k < 4 * 8:   # short rows: packed even where every threshold says dot
            assert np.array_equal(out["dot"], out["packed"]), f"K={k}: not packed"
        assert np.array_equal(out["long"], out[long]), f"K={k}: not the {long} path"
        assert np.array_equal(out["aliased"], out[aliased]), f"K={k}: not the {aliased} path"
        if not np.array_equal(out["dot"], out["packed"]):
            differ.add(k)
    assert len(differ) >= 5   # else the comparison could not tell the paths apart
