"""Tests for the CUDA kernel templates (templates/cuda/*.cu.j2) and the CPU emulator
(templates/cuda/cuda_cpu.h).

(a) nvcc compiles the rendered kernels for sm_80 and sm_90 with -Xptxas -v and the GEMM
    kernels must not spill (skipped only if nvcc is absent).
(b) The same sources are built with g++ -include cuda_cpu.h into a shared library and run
    through ctypes against numpy float64 references (odd sizes, strides, misalignment,
    bias/activation, alpha/beta, reductions and their determinism).
(c) A deliberately broken GEMM (tile-publishing __syncthreads() removed) must give wrong
    results, proving the emulator's barrier is real; a divergent barrier must abort.

All compiles start in parallel at the beginning of the module; nvcc (the slowest) is
awaited by the last test.
"""

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"
CPU_HEADER = TEMPLATES / "cuda" / "cuda_cpu.h"

GXX_FLAGS = ["-std=c++20", "-O2", "-Wall", "-Wno-unknown-pragmas", "-fPIC"]
SMALL_TILES = dict(bm=32, bn=32, bk=8, tm=4, tn=4)  # 64 threads/block: fast to emulate
ODD_SIZES = [1, 7, 33, 130]

ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH = 0, 1, 2, 3
CUDA_ERROR_INVALID_CONFIGURATION = 9


def render(name, **params):
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(**params)


WRAPPERS = r"""
#include "gemm.cu"
#include "reduce.cu"

__global__ void t_fill_kernel(float* out, float v) { out[threadIdx.x] = v; }

extern "C" {
int t_gemm_nt(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
              float beta, float* C, int ldc, const float* bias, int act) {
    return (int)lc_gemm_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, act,
                           (cudaStream_t)0);
}
int t_gemm_nn(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
              float beta, float* C, int ldc) {
    return (int)lc_gemm_nn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, (cudaStream_t)0);
}
int t_gemm_tn(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
              float beta, float* C, int ldc) {
    return (int)lc_gemm_tn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, (cudaStream_t)0);
}
int t_colsum(size_t rows, size_t cols, const float* X, size_t ldx, float alpha, float beta,
             float* out, float* ws) {
    return (int)lc_colsum(rows, cols, X, ldx, alpha, beta, out, ws, (cudaStream_t)0);
}
int t_sum(size_t n, float alpha, const float* x, float* out, float* ws) {
    return (int)lc_sum(n, alpha, x, out, ws, (cudaStream_t)0);
}
/* Invalid launch (2048 threads/block): must report cudaErrorInvalidConfiguration and not run. */
int t_bad_launch(float* out) {
    LC_LAUNCH(t_fill_kernel, dim3(1), dim3(2048), 0, (cudaStream_t)0)(out, 1.0f);
    return (int)cudaGetLastError();
}
/* A host function written as for the GPU: device buffers, copies, Linear forward, copy back. */
int t_host_linear(int M, int N, int K, const float* X, const float* W, const float* b, float* Y) {
    float *dX = nullptr, *dW = nullptr, *db = nullptr, *dY = nullptr;
    cudaStream_t s;
    if (cudaStreamCreate(&s) != cudaSuccess) return -1;
    if (cudaMalloc(&dX, sizeof(float) * M * K) != cudaSuccess) return -2;
    if (cudaMalloc(&dW, sizeof(float) * N * K) != cudaSuccess) return -3;
    if (cudaMalloc(&db, sizeof(float) * N) != cudaSuccess) return -4;
    if (cudaMalloc(&dY, sizeof(float) * M * N) != cudaSuccess) return -5;
    cudaMemcpyAsync(dX, X, sizeof(float) * M * K, cudaMemcpyHostToDevice, s);
    cudaMemcpy(dW, W, sizeof(float) * N * K, cudaMemcpyHostToDevice);
    cudaMemcpy(db, b, sizeof(float) * N, cudaMemcpyHostToDevice);
    cudaMemset(dY, 0, sizeof(float) * M * N);
    cudaError_t e = lc_gemm_nt(M, N, K, 1.0f, dX, K, dW, K, 0.0f, dY, N, db, LC_ACT_RELU, s);
    if (e != cudaSuccess) { fprintf(stderr, "%s\n", cudaGetErrorString(e)); return (int)e; }
    cudaStreamSynchronize(s);
    cudaMemcpy(Y, dY, sizeof(float) * M * N, cudaMemcpyDeviceToHost);
    cudaFree(dX); cudaFree(dW); cudaFree(db); cudaFree(dY);
    cudaStreamDestroy(s);
    return (int)cudaGetLastError();
}
}
"""

DEADLOCK_SRC = r"""
__global__ void early_exit_then_barrier(float* out) {
    if (threadIdx.x < 3) return;          /* some threads exit ... */
    __syncthreads();                      /* ... while the others wait here forever */
    out[threadIdx.x] = 1.0f;
}
__global__ void barrier_in_both_branches(float* out) {
    if (threadIdx.x % 2) { __syncthreads(); out[threadIdx.x] = 1.0f; }
    else { __syncthreads(); out[threadIdx.x] = 2.0f; }
}
int main(int argc, char** argv) {
    float* d = nullptr;
    cudaMalloc(&d, 64 * sizeof(float));
    if (argc > 1)
        LC_LAUNCH(barrier_in_both_branches, dim3(1), dim3(64), 0, (cudaStream_t)0)(d);
    else
        LC_LAUNCH(early_exit_then_barrier, dim3(1), dim3(64), 0, (cudaStream_t)0)(d);
    printf("kernel returned\n");
    return 0;
}
"""


class Job:
    """A compile running in the background."""

    def __init__(self, cmd, cwd, what):
        self.cmd, self.what = cmd, what
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._result = None

    def wait(self):
        if self._result is None:
            out, err = self.proc.communicate(timeout=300)
            self._result = (self.proc.returncode, out, err)
        return self._result

    def check(self):
        rc, out, err = self.wait()
        assert rc == 0, f"{self.what} failed ({' '.join(self.cmd)}):\n{out}\n{err}"
        return out + err

    def stop(self):
        """Kill the compile if it is still running (a fixture's teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def find_nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("lc_cuda")
    shutil.copy(CPU_HEADER, d / "cuda_cpu.h")
    variants = {
        "default": {},
        "small": dict(SMALL_TILES),
        "broken": {"skip_tile_sync": True},
    }
    jobs = {}
    nvcc = find_nvcc()
    for name, params in variants.items():
        sub = d / name
        sub.mkdir()
        (sub / "gemm.cu").write_text(render("cuda/gemm.cu.j2", **params))
        red = {"reduce_threads": 64} if name == "small" else {}
        (sub / "reduce.cu").write_text(render("cuda/reduce.cu.j2", **red))
        (sub / "wrappers.cpp").write_text(WRAPPERS)
        if name == "default" and nvcc:
            (sub / "all.cu").write_text('#include "gemm.cu"\n#include "reduce.cu"\n')
            for arch in ("sm_80", "sm_90"):  # one process per arch: they run in parallel
                jobs[f"nvcc_{arch}"] = Job(
                    [
                        nvcc,
                        "-std=c++17",
                        "-cubin",
                        f"-arch={arch}",
                        "-Xptxas",
                        "-v",
                        "all.cu",
                        "-o",
                        f"all_{arch}.cubin",
                    ],
                    sub,
                    f"nvcc ({arch})",
                )
        if shutil.which("g++"):
            jobs[name] = Job(
                [
                    "g++",
                    *GXX_FLAGS,
                    "-shared",
                    "-include",
                    str(d / "cuda_cpu.h"),
                    "-I",
                    str(d),
                    "wrappers.cpp",
                    "-o",
                    "lib.so",
                ],
                sub,
                f"g++ ({name})",
            )
    (d / "deadlock.cpp").write_text(DEADLOCK_SRC)
    if shutil.which("g++"):
        jobs["deadlock"] = Job(
            ["g++", *GXX_FLAGS, "-include", "cuda_cpu.h", "deadlock.cpp", "-o", "deadlock"],
            d,
            "g++ (deadlock)",
        )
    yield d, jobs
    for j in jobs.values():
        j.stop()


F = ctypes.c_float
CI = ctypes.c_int
SZ = ctypes.c_size_t
PF = ctypes.POINTER(ctypes.c_float)


class Emu:
    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        L = self.lib
        L.t_gemm_nt.argtypes = [CI, CI, CI, F, PF, CI, PF, CI, F, PF, CI, PF, CI]
        L.t_gemm_nn.argtypes = [CI, CI, CI, F, PF, CI, PF, CI, F, PF, CI]
        L.t_gemm_tn.argtypes = [CI, CI, CI, F, PF, CI, PF, CI, F, PF, CI]
        L.t_colsum.argtypes = [SZ, SZ, PF, SZ, F, F, PF, PF]
        L.t_sum.argtypes = [SZ, F, PF, PF, PF]
        L.t_bad_launch.argtypes = [PF]
        L.t_host_linear.argtypes = [CI, CI, CI, PF, PF, PF, PF]

    def gemm(self, kind, M, N, K, A, lda, B, ldb, C, ldc, alpha=1.0, beta=0.0, bias=None, act=0):
        args = [M, N, K, alpha, ptr(A), lda, ptr(B), ldb, beta, ptr(C), ldc]
        if kind == "nt":
            rc = self.lib.t_gemm_nt(*args, ptr(bias), act)
        else:
            assert bias is None and act == 0
            rc = getattr(self.lib, f"t_gemm_{kind}")(*args)
        assert rc == 0, f"lc_gemm_{kind} returned cudaError {rc}"


def ptr(a):
    if a is None:
        return None
    assert a.dtype == np.float32
    return a.ctypes.data_as(PF)


def lib_for(build, name):
    d, jobs = build
    if name not in jobs:
        pytest.skip("g++ not available")
    jobs[name].check()
    return Emu(d / name / "lib.so")


@pytest.fixture(scope="module")
def emu(build):
    return lib_for(build, "default")


@pytest.fixture(scope="module")
def emu_small(build):
    return lib_for(build, "small")


def operands(rng, kind, M, N, K):
    """Returns (A, B) in their natural storage layout for the given product."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    if kind == "nt":
        return f(M, K), f(N, K)  # X [batch, C_in], W [C_out, C_in]
    if kind == "nn":
        return f(M, K), f(K, N)  # dY [batch, C_out], W [C_out, C_in]
    return f(K, M), f(K, N)  # tn: dY [batch, C_out], X [batch, C_in]


def reference(kind, A, B):
    A, B = A.astype(np.float64), B.astype(np.float64)
    if kind == "nt":
        return A @ B.T
    if kind == "nn":
        return A @ B
    return A.T @ B


def assert_close(got, ref, K, what):
    tol = 2e-5 * max(1.0, float(np.sqrt(max(K, 1)))) * max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0))
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def run_gemm(emu, kind, M, N, K, rng, alpha=1.0, beta=0.0, bias=False, act=0, c0=None):
    A, B = operands(rng, kind, M, N, K)
    C = np.zeros((M, N), np.float32) if c0 is None else c0.copy()
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    emu.gemm(kind, M, N, K, A, A.shape[1], B, B.shape[1], C, N, alpha, beta, b, act)
    ref = alpha * reference(kind, A, B)
    if b is not None:
        ref = ref + b.astype(np.float64)
    if beta != 0.0:
        ref = ref + beta * c0.astype(np.float64)
    ref = {
        0: lambda x: x,
        1: lambda x: np.maximum(x, 0),
        2: lambda x: 1 / (1 + np.exp(-x)),
        3: np.tanh,
    }[act](ref)
    return C, ref


# ----------------------------------------------------------------------------- (b) emulator


@pytest.mark.parametrize("kind", ["nt", "nn", "tn"])
def test_gemm_odd_sizes_default_tiles(emu, kind):
    rng = np.random.default_rng(1)
    for M in ODD_SIZES:
        for N in ODD_SIZES:
            for K in ODD_SIZES:
                C, ref = run_gemm(emu, kind, M, N, K, rng)
                assert_close(C, ref, K, f"{kind} M={M} N={N} K={K}")


@pytest.mark.parametrize("kind", ["nt", "nn", "tn"])
def test_gemm_multi_block_small_tiles(emu_small, kind):
    # 32x32 tiles: several blocks in both grid dimensions and many k-tiles
    rng = np.random.default_rng(2)
    for M, N, K in [(1, 1, 1), (65, 97, 41), (100, 33, 130), (128, 64, 96), (3, 130, 257)]:
        C, ref = run_gemm(emu_small, kind, M, N, K, rng)
        assert_close(C, ref, K, f"{kind} M={M} N={N} K={K}")


@pytest.mark.parametrize("kind", ["nt", "nn", "tn"])
def test_gemm_vector_path_strides_and_misalignment(emu, kind):
    """Aligned (float4) path with partial edges, padded leading dimensions (padding must be
    left untouched), and a misaligned base pointer (scalar fallback)."""
    rng = np.random.default_rng(3)
    for M, N, K, pad, offset in [
        (128, 128, 64, 0, 0),
        (130, 68, 36, 0, 0),
        (4, 260, 12, 0, 0),
        (33, 66, 40, 4, 0),
        (33, 65, 9, 3, 0),
        (64, 36, 20, 0, 1),
        (16, 12, 8, 4, 1),
    ]:
        A, B = operands(rng, kind, M, N, K)
        ref = reference(kind, A, B)

        def embed(X):
            buf = np.full(offset + X.shape[0] * (X.shape[1] + pad) + 8, 7.0, np.float32)
            view = buf[offset : offset + X.shape[0] * (X.shape[1] + pad)].reshape(
                X.shape[0], X.shape[1] + pad
            )
            view[:, : X.shape[1]] = X
            return buf, view

        _abuf, Av = embed(A)
        _bbuf, Bv = embed(B)
        cbuf, Cv = embed(np.zeros((M, N), np.float32))
        emu.gemm(
            kind,
            M,
            N,
            K,
            Av[:, : A.shape[1]],
            Av.shape[1],
            Bv[:, : B.shape[1]],
            Bv.shape[1],
            Cv[:, :N],
            Cv.shape[1],
        )
        what = f"{kind} M={M} N={N} K={K} pad={pad} offset={offset}"
        assert_close(Cv[:, :N], ref, K, what)
        assert np.all(Cv[:, N:] == 7.0), f"{what}: wrote into C's row padding"
        assert np.all(cbuf[:offset] == 7.0) and np.all(cbuf[offset + Cv.size :] == 7.0), (
            f"{what}: out of bounds"
        )


@pytest.mark.parametrize("act", [ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH])
def test_gemm_nt_bias_activation(emu, act):
    rng = np.random.default_rng(4 + act)
    for M, N, K in [(33, 130, 7), (130, 36, 64), (1, 5, 130)]:
        for bias in (False, True):
            C, ref = run_gemm(emu, "nt", M, N, K, rng, bias=bias, act=act)
            assert_close(C, ref, K, f"nt act={act} bias={bias} M={M} N={N} K={K}")


@pytest.mark.parametrize("kind", ["nt", "nn", "tn"])
def test_gemm_alpha_beta(emu, kind):
    rng = np.random.default_rng(5)
    for M, N, K in [(33, 7, 130), (130, 132, 16)]:
        c0 = rng.standard_normal((M, N)).astype(np.float32)
        C, ref = run_gemm(emu, kind, M, N, K, rng, alpha=0.75, beta=-1.5, c0=c0)
        assert_close(C, ref, K, f"{kind} alpha/beta M={M} N={N} K={K}")
        # beta == 0 must not read C (NaN garbage stays out of the result)
        nan0 = np.full((M, N), np.nan, np.float32)
        C, ref = run_gemm(emu, kind, M, N, K, rng, alpha=2.0, beta=0.0, c0=nan0)
        assert_close(C, ref, K, f"{kind} beta=0 over NaN M={M} N={N} K={K}")
    # accumulate two products into one buffer (dW += ...)
    M, N, K = 7, 33, 130
    A1, B1 = operands(rng, kind, M, N, K)
    A2, B2 = operands(rng, kind, M, N, K)
    C = np.zeros((M, N), np.float32)
    emu.gemm(kind, M, N, K, A1, A1.shape[1], B1, B1.shape[1], C, N)
    emu.gemm(kind, M, N, K, A2, A2.shape[1], B2, B2.shape[1], C, N, 1.0, 1.0)
    assert_close(C, reference(kind, A1, B1) + reference(kind, A2, B2), 2 * K, f"{kind} accumulate")


@pytest.mark.parametrize("which", ["default", "small"])
def test_colsum(build, which):
    emu = lib_for(build, which)
    rng = np.random.default_rng(6)
    for rows in (1, 7, 300, 1500):
        for cols in (1, 33, 130):
            for ws_on in (False, True):
                ldx = cols + (3 if rows == 7 else 0)
                X = rng.standard_normal((rows, ldx)).astype(np.float32)
                ws = np.zeros(64 * cols, np.float32) if ws_on else None
                out0 = rng.standard_normal(cols).astype(np.float32)
                outs = []
                for _ in range(2):
                    out = out0.copy()
                    rc = emu.lib.t_colsum(rows, cols, ptr(X), ldx, 0.5, 2.0, ptr(out), ptr(ws))
                    assert rc == 0
                    outs.append(out)
                ref = 0.5 * X[:, :cols].astype(np.float64).sum(0) + 2.0 * out0
                what = f"colsum rows={rows} cols={cols} ws={ws_on}"
                assert_close(outs[0], ref, rows, what)
                assert outs[0].tobytes() == outs[1].tobytes(), f"{what}: not deterministic"
                out = np.full(cols, np.nan, np.float32)  # beta = 0: out not read
                assert emu.lib.t_colsum(rows, cols, ptr(X), ldx, 1.0, 0.0, ptr(out), ptr(ws)) == 0
                assert_close(out, X[:, :cols].astype(np.float64).sum(0), rows, what + " beta=0")


@pytest.mark.parametrize("which", ["default", "small"])
def test_sum(build, which):
    emu = lib_for(build, which)
    rng = np.random.default_rng(7)
    for n in (0, 1, 1000, 100_003):
        x = rng.standard_normal(n).astype(np.float32) + 0.25
        for ws_on in (False, True):
            ws = np.zeros(1024, np.float32) if ws_on else None
            alpha = 1.0 / max(n, 1)
            outs = []
            for _ in range(2):
                out = np.full(1, np.nan, np.float32)
                assert emu.lib.t_sum(n, alpha, ptr(x), ptr(out), ptr(ws)) == 0
                outs.append(out)
            ref = np.array([alpha * x.astype(np.float64).sum()])
            what = f"sum n={n} ws={ws_on}"
            assert_close(outs[0], ref, n, what)
            assert outs[0].tobytes() == outs[1].tobytes(), f"{what}: not deterministic"


# Chunking constants of templates/cuda/reduce.cu.j2 (the sizes below are ragged against them).
SUM_CHUNK, SUM_MAX_PARTIALS = 16384, 1024
COLSUM_CHUNK_ROWS, COLSUM_MAX_CHUNKS = 512, 64
VALIDATE_REL = 1e-5   # lincompile validate's bound against float64


def assert_rel(got, ref, what):
    """Every element within VALIDATE_REL of the float64 reference (relative)."""
    ref = np.asarray(ref, np.float64)
    err = np.abs(got.astype(np.float64) - ref)
    bad = np.argwhere(~(err <= VALIDATE_REL * np.abs(ref)))
    assert not len(bad), (f"{what}: {len(bad)} of {ref.size} off, e.g. at {tuple(bad[0])}: got "
                          f"{got[tuple(bad[0])]}, want {ref[tuple(bad[0])]}")


@pytest.mark.parametrize("which", ["default", "small"])
def test_sum_ragged_sizes(build, which):
    """lc_sum at sizes that do not divide its chunks (k·chunk ± 1, primes; the chunks of a
    two-pass sum are ceil(n / partials) long, ragged too), against a float64 sum at the
    validate bound. Values lie in [1, 2) with a large one at each end, so a dropped element
    (the first, or the ragged tail) is far outside it. (Past the partials cap the split is the
    same arithmetic: tests/test_sizes.py checks it up to n > 2^32.)"""
    emu = lib_for(build, which)
    rng = np.random.default_rng(10)
    sizes = [1, 63, 65, 255, 257, SUM_CHUNK - 1, SUM_CHUNK + 1, 2 * SUM_CHUNK - 1,
             2 * SUM_CHUNK + 1, 3 * SUM_CHUNK + 1, 49157, 100_003]
    for n in sizes:
        x = rng.uniform(1, 2, n).astype(np.float32)
        x[0], x[-1] = 0.25 * n, 0.5 * n
        ref = x.astype(np.float64).sum()
        for ws_on in (False, True):
            ws = np.zeros(SUM_MAX_PARTIALS, np.float32) if ws_on else None
            out = np.full(1, np.nan, np.float32)
            assert emu.lib.t_sum(n, 1.0, ptr(x), ptr(out), ptr(ws)) == 0
            assert_rel(out, [ref], f"sum n={n} ws={ws_on}")


@pytest.mark.parametrize("which", ["default", "small"])
def test_colsum_ragged_sizes(build, which):
    """lc_colsum with rows that are not a multiple of its chunks or of the block's rows, and
    columns that are not a multiple of 32, at the validate bound against float64."""
    emu = lib_for(build, which)
    rng = np.random.default_rng(11)
    for rows in (1, 9, 511, 513, 2 * COLSUM_CHUNK_ROWS - 1, 2 * COLSUM_CHUNK_ROWS + 1, 1031,
                 COLSUM_CHUNK_ROWS * COLSUM_MAX_CHUNKS + 7):
        for cols in (1, 31, 33):
            X = rng.uniform(1, 2, (rows, cols)).astype(np.float32)
            X[-1] *= 100   # the ragged tail's last row weighs as much as a hundred others
            ref = X.astype(np.float64).sum(0)
            for ws_on in (False, True):
                ws = np.zeros(COLSUM_MAX_CHUNKS * cols, np.float32) if ws_on else None
                out = np.full(cols, np.nan, np.float32)
                assert emu.lib.t_colsum(rows, cols, ptr(X), cols, 1.0, 0.0, ptr(out),
                                        ptr(ws)) == 0
                assert_rel(out, ref, f"colsum rows={rows} cols={cols} ws={ws_on}")


def test_invalid_launch_configuration(emu):
    out = np.zeros(2048, np.float32)
    assert emu.lib.t_bad_launch(ptr(out)) == CUDA_ERROR_INVALID_CONFIGURATION
    assert not out.any(), "an invalid launch must not run"


def test_host_side_runtime_api(emu):
    rng = np.random.default_rng(8)
    M, N, K = 9, 33, 20
    X, W = operands(rng, "nt", M, N, K)
    b = rng.standard_normal(N).astype(np.float32)
    Y = np.zeros((M, N), np.float32)
    assert emu.lib.t_host_linear(M, N, K, ptr(X), ptr(W), ptr(b), ptr(Y)) == 0
    ref = np.maximum(X.astype(np.float64) @ W.T.astype(np.float64) + b, 0)
    assert_close(Y, ref, K, "host linear")


# ----------------------------------------------------------------------------- (c) barrier is real


def test_broken_barrier_gives_wrong_results(build, emu):
    """Without the __syncthreads() that publishes each prefetched shared-memory tile, threads
    consume tiles other threads have not written yet: the emulator must expose this."""
    d, _jobs = build
    gemm_src = (d / "broken" / "gemm.cu").read_text()
    assert (
        gemm_src.count("__syncthreads()")
        == (d / "default" / "gemm.cu").read_text().count("__syncthreads()") - 1
    )
    broken = lib_for(build, "broken")
    M, N, K = 64, 48, 130  # 17 k-tiles
    for kind in ("nt", "nn", "tn"):
        rng = np.random.default_rng(9)
        A, B = operands(rng, kind, M, N, K)
        ref = reference(kind, A, B)
        good = np.zeros((M, N), np.float32)
        emu.gemm(kind, M, N, K, A, A.shape[1], B, B.shape[1], good, N)
        assert_close(good, ref, K, f"intact {kind}")
        results = []
        for _ in range(2):
            bad = np.zeros((M, N), np.float32)
            broken.gemm(kind, M, N, K, A, A.shape[1], B, B.shape[1], bad, N)
            results.append(bad)
        err = float(np.abs(results[0] - ref).max())
        assert err > 1.0, f"broken {kind} kernel unexpectedly matched (max err {err})"
        assert results[0].tobytes() == results[1].tobytes(), "emulation must be deterministic"


def test_divergent_barrier_aborts(build):
    d, jobs = build
    if "deadlock" not in jobs:
        pytest.skip("g++ not available")
    jobs["deadlock"].check()
    p = subprocess.run([str(d / "deadlock")], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "BARRIER DEADLOCK" in p.stderr and "early_exit_then_barrier" in p.stderr, p.stderr
    assert "kernel returned" not in p.stdout
    p = subprocess.run(
        [str(d / "deadlock"), "divergent"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode != 0
    assert "DIVERGENT BARRIER" in p.stderr and "barrier_in_both_branches" in p.stderr, p.stderr


# ----------------------------------------------------------------------------- (a) nvcc / ptxas


def parse_ptxas(text):
    """-> {(function, arch): {'regs':, 'stack':, 'spill_st':, 'spill_ld':}}"""
    info, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'", line)
        if m:
            cur = (m.group(1), m.group(2))
            info[cur] = {}
            continue
        if cur is None:
            continue
        m = re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        )
        if m:
            info[cur].update(
                stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3))
            )
        m = re.search(r"Used (\d+) registers", line)
        if m:
            info[cur]["regs"] = int(m.group(1))
    return info


def test_nvcc_sm80_sm90_no_spills(build):
    _d, jobs = build
    if "nvcc_sm_90" not in jobs:
        pytest.skip("nvcc not found: cannot compile the CUDA kernels on this machine")
    info = parse_ptxas(jobs["nvcc_sm_80"].check() + jobs["nvcc_sm_90"].check())
    gemm = {k: v for k, v in info.items() if "lc_gemm_kernel" in k[0]}
    for arch in ("sm_80", "sm_90"):
        assert sum(1 for k in gemm if k[1] == arch) == 8, (  # nt nn tn tt, vector or not
            f"expected 8 GEMM kernels for {arch}: {sorted(info)}"
        )
        for name in ("lc_colsum_kernel", "lc_sum_kernel"):
            assert any(name in k[0] and k[1] == arch for k in info), f"{name} missing for {arch}"
    for (fn, arch), v in sorted(info.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{arch} {fn}: {v}")
    for (fn, arch), v in info.items():
        assert v.get("spill_st") == 0 and v.get("spill_ld") == 0, f"{fn} spills on {arch}: {v}"
        assert v.get("stack") == 0, f"{fn} uses a stack frame on {arch}: {v}"
        assert v.get("regs", 256) <= 255
