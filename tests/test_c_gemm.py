"""templates/c/gemm.c.j2 on its own: all four layouts, odd shapes that cross every cache
and register block, alpha/beta, bias and activation epilogues, the portable fallback,
and OpenMP results bitwise equal to one thread — against numpy float64."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from lincompile.backends.c import TILES
from lincompile.backends.render import render

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

TINY = {"mr": 2, "nr": 16, "kc": 8, "mc": 4, "nc": 32, "direct_max_m": 4}
WRAP = "\n".join(f"""
void t_{lay}(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc, const float *bias, int act, int threads) {{
    lc_gemm_{lay}(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, act, pack, threads);
}}""" for lay in ("nt", "nn", "tn", "tt"))
SHAPES = [(1, 1, 1), (3, 17, 5), (7, 33, 64), (37, 45, 29), (65, 130, 9), (130, 20, 300),
          (300, 70, 17), (64, 128, 784)]


@pytest.fixture(scope="module", params=["tiny", "default", "portable", "openmp"])
def lib(request, tmp_path_factory):
    tiles = TINY if request.param in ("tiny", "openmp") else TILES
    flags = {"portable": ["-O2", "-DLC_GEMM_PORTABLE"], "openmp": ["-O2", "-fopenmp"]}.get(
        request.param, ["-O2", "-march=native"])
    src = render("c/gemm.c.j2", **tiles) + "\nstatic float pack[1 << 22];\n" + WRAP
    d = tmp_path_factory.mktemp(request.param)
    (d / "g.c").write_text(src)
    r = subprocess.run(["cc", *flags, "-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC",
                        "-shared", str(d / "g.c"), "-o", str(d / "g.so"), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return request.param, ctypes.CDLL(str(d / "g.so"))


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


@pytest.mark.parametrize("lay", ["nt", "nn", "tn", "tt"])
def test_layouts_against_float64(lib, lay):
    kind, so = lib
    rng = np.random.default_rng(0)
    for i, (M, N, K) in enumerate(SHAPES):
        a = rng.standard_normal((K, M) if lay[0] == "t" else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if lay[1] == "t" else (K, N)).astype(np.float32)
        alpha, beta, act = [(1.0, 0.0, 0), (0.5, 1.0, 1), (-2.0, 0.25, 2), (1.0, 0.0, 3)][i % 4]
        bias = rng.standard_normal(N).astype(np.float32) if i % 2 else None
        c0 = rng.standard_normal((M, N)).astype(np.float32)
        c = c0.copy() if beta else np.full((M, N), np.nan, np.float32)
        call(so, lay, a, b, c, alpha, beta, bias, act)
        want = expected(lay, a, b, c0, alpha, beta, bias, act)
        err = np.abs(c - want).max() / (np.abs(want).max() + 1e-30)
        assert err < 1e-5 * max(1, np.sqrt(K) / 4), f"{kind} {lay} {M}x{N}x{K}: {err:.1e}"
        if kind == "openmp":
            c2 = c0.copy() if beta else np.full((M, N), np.nan, np.float32)
            call(so, lay, a, b, c2, alpha, beta, bias, act, threads=2)
            assert np.array_equal(c, c2), f"2 threads differ from 1: {lay} {M}x{N}x{K}"
