"""The emulator's warp-level primitives (templates/cuda/cuda_cpu.h) against numpy.

- shuffles (idx / up / down / xor, widths below 32) and votes against the semantics of
  PTX shfl.sync written out here in Python;
- tf32 (cvt.rna) and bf16 (round to nearest even) conversion against roundings computed
  here in float64 by picking the nearer neighbour;
- ldmatrix (x1/x2/x4, .trans): every lane's registers against the PTX fragment layout;
- mma.sync m16n8k8 tf32 and m16n8k16 bf16 for a single warp over 16×8×K, with fragments
  built from the PTX layout formulas and, separately, loaded by ldmatrix from every
  shared-memory layout the GEMMs use (both must reproduce A·B + C: the layouts agree),
  against float64 products of operands rounded the same way (bound 1e-5);
- cp.async groups: zero fill, and the copy lands at the wait that covers it;
- warp deadlock / divergence abort with a clear message;
- nvcc turns the wrappers into mma / ldmatrix / cp.async PTX for sm_80 and sm_90.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cuda_kernels import Job

from lincompile.backends.cuda_build import find_nvcc

HEADER = Path(__file__).resolve().parents[1] / "templates" / "cuda" / "cuda_cpu.h"
FLAGS = ["-std=c++20", "-O1", "-Wall", "-Wno-unknown-pragmas", "-fPIC"]

SRC = (Path(__file__).resolve().parent / "cuda_warp_kernels.cu").read_text()

ABORT_SRC = r"""
__global__ void exits_before_shfl(float* out) {
    if (threadIdx.x % 32 == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
__global__ void shfl_and_syncwarp(float* out) {
    if (threadIdx.x % 32 < 16) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    else __syncwarp();
}
__global__ void shfl_and_syncthreads(float* out) {
    if (threadIdx.x == 5) __syncthreads();   /* lane 5 waits here, its warp at the shuffle */
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
int main(int argc, char** argv) {
    float* d = nullptr;
    cudaMalloc(&d, 64 * sizeof(float));
    const int which = argv[1][0] - '0';
    if (which == 0) LC_LAUNCH(exits_before_shfl, 1, 64, 0, 0)(d);
    if (which == 1) LC_LAUNCH(shfl_and_syncwarp, 1, 64, 0, 0)(d);
    if (which == 2) LC_LAUNCH(shfl_and_syncthreads, 1, 64, 0, 0)(d);
    printf("kernel returned\n");
    return 0;
}
"""

PTX_SRC = r"""
__global__ void k(const float* g, float* out) {
    __shared__ __align__(16) float s[32 * 8];
    const int l = threadIdx.x;
    lc_cp_async_cg16(&s[4 * l], &g[4 * l]);
    lc_cp_async_ca<4>(&s[128 + l], &g[128 + l], 0);
    lc_cp_async_commit();
    lc_cp_async_wait<0>();
    __syncthreads();
    uint32_t a[4], b[2], bt[2];
    lc_ldmatrix_x4(a, &s[(l % 16) * 8]);
    lc_ldmatrix_x2_trans(b, &s[(l % 16) * 8]);
    lc_ldmatrix_x1(bt, &s[(l % 8) * 8]);
    float c[4] = {0, 0, 0, 0};
    lc_mma_bf16_m16n8k16(c, a, b, c);
    for (int i = 0; i < 4; ++i) a[i] = lc_cvt_tf32(__uint_as_float(a[i]));
    bt[1] = lc_bf16x2(c[0], c[1]);
    lc_mma_tf32_m16n8k8(c, a, bt, c);
    for (int i = 0; i < 4; ++i) out[4 * l + i] = c[i] + __shfl_xor_sync(0xffffffffu, c[i], 1);
}
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    d = tmp_path_factory.mktemp("lc_mma")
    shutil.copy(HEADER, d / "cuda_cpu.h")
    (d / "t.cpp").write_text(SRC)
    (d / "abort.cpp").write_text(ABORT_SRC)
    (d / "ptx.cu").write_text('#include "cuda_cpu.h"\n' + PTX_SRC)
    jobs = {"lib": Job(["g++", *FLAGS, "-shared", "-include", "cuda_cpu.h", "t.cpp", "-o", "t.so"],
                       d, "g++ (warp primitives)"),
            "abort": Job(["g++", *FLAGS, "-include", "cuda_cpu.h", "abort.cpp", "-o", "abort"],
                         d, "g++ (aborts)")}
    nvcc = find_nvcc()
    if nvcc:
        for arch in ("sm_80", "sm_90"):
            jobs[arch] = Job([nvcc, "-std=c++17", f"-arch={arch}", "-ptx", "ptx.cu", "-o",
                              f"ptx_{arch}.ptx"], d, f"nvcc -ptx {arch}")
    yield d, jobs
    for j in jobs.values():
        j.stop()


@pytest.fixture(scope="module")
def lib(builds):
    d, jobs = builds
    jobs["lib"].check()
    L = ctypes.CDLL(str(d / "t.so"))
    return L


def p(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


# ----------------------------------------------------------------- PTX semantics in Python
def shfl_expected(v: np.ndarray, mode: int, arg: int, width: int) -> np.ndarray:
    """PTX shfl.sync (as __shfl*_sync call it) for each thread of blocks of whole warps."""
    out = np.empty_like(v)
    b = arg & 31
    for t in range(len(v)):
        w0, lane = t - t % 32, t % 32
        lo, hi = lane - lane % width, lane - lane % width + width - 1
        if mode == 0:
            j = lo + (b % width)
        elif mode == 1:
            j = lane - b if lane - b >= lo else lane
        elif mode == 2:
            j = lane + b if lane + b <= hi else lane
        else:
            j = lane ^ b if (lane ^ b) <= hi else lane
        out[t] = v[w0 + j]
    return out


def round_nearest(x: np.ndarray, keep_bits: int, ties_even: bool) -> np.ndarray:
    """float32 → the nearest float32 whose low ``keep_bits`` mantissa bits are zero, picked
    by comparing distances in float64 (ties: to even, or away from zero)."""
    u = x.view(np.uint32)
    step = np.uint32(1 << keep_bits)
    lo = u & ~np.uint32(step - 1)                        # toward zero
    hi = np.where(np.isinf(x), lo, lo + step)            # away from zero (may become inf)
    flo = lo.view(np.float32).astype(np.float64)
    fhi = hi.view(np.float32).astype(np.float64)
    ax = x.astype(np.float64)
    fhi = np.where(np.isinf(fhi) & ~np.isinf(x), np.sign(ax) * 2.0**128, fhi)  # IEEE overflow
    with np.errstate(invalid="ignore"):
        dlo, dhi = np.abs(ax - flo), np.abs(fhi - ax)
    lo_even = (lo & step) == 0
    pick_hi = (dhi < dlo) | ((dhi == dlo) & ((~lo_even) if ties_even else True))
    out = np.where(pick_hi & ~np.isinf(x), hi, lo)
    return out.view(np.float32)


def tf32(x):
    return round_nearest(np.asarray(x, np.float32), 13, ties_even=False)


def bf16(x):
    return round_nearest(np.asarray(x, np.float32), 16, ties_even=True)


def special_floats(rng) -> np.ndarray:
    base = rng.standard_normal(2000).astype(np.float32) * np.float32(10.0) ** rng.integers(
        -30, 30, 2000).astype(np.float32)
    u = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32)
    ties = (u & np.uint32(0xFFFF0000)) | np.uint32(0x8000)       # exact bf16 ties
    ties_tf = (u & np.uint32(0xFFFFE000)) | np.uint32(0x1000)    # exact tf32 ties
    fixed = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 3.4028235e38, -3.4028235e38,
                      1e-45, -1e-45, 1.17549435e-38], np.float32)
    out = np.concatenate([base, ties.view(np.float32), ties_tf.view(np.float32), fixed])
    return out[np.isfinite(out) | np.isinf(out)]


# --------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("n", [32, 96])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 1])
def test_shuffles_and_votes(lib, n, width):
    rng = np.random.default_rng(width * 100 + n)
    v = rng.integers(-1000, 1000, n).astype(np.int32)
    for arg in (0, 1, 3, 5, 17, 31):
        out = np.zeros(6 * n, np.int32)
        assert lib.t_shfl(p(v), p(out), n, arg, width) == 0
        out = out.reshape(6, n)
        for mode in range(4):
            np.testing.assert_array_equal(out[mode], shfl_expected(v, mode, arg, width),
                                          err_msg=f"mode {mode} arg {arg} width {width}")
        bits = (v & 1).astype(np.int64)
        for w0 in range(0, n, 32):
            ballot = sum(int(b) << i for i, b in enumerate(bits[w0:w0 + 32]))
            assert (out[4, w0:w0 + 32].astype(np.int64) & 0xFFFFFFFF == ballot).all()
            vote = int(bits[w0:w0 + 32].any()) + 2 * int(bits[w0:w0 + 32].all())
            assert (out[5, w0:w0 + 32] == vote).all()


def test_warp_sums_with_disjoint_masks(lib):
    v = np.random.default_rng(5).standard_normal(64)
    out = np.zeros(128)
    assert lib.t_reduce(p(v), p(out), 64) == 0
    out = out.reshape(64, 2)
    for t in range(64):
        w0 = t - t % 32
        np.testing.assert_allclose(out[t, 0], v[w0:w0 + 32].sum(), rtol=1e-14)
        if t % 16 == 0:   # lane 0 of each half holds that half's sum
            np.testing.assert_allclose(out[t, 1], v[t:t + 16].sum(), rtol=1e-14)


def test_tf32_and_bf16_conversion(lib):
    x = special_floats(np.random.default_rng(2))
    got = np.zeros(len(x), np.uint32)
    lib.t_tf32(p(x), p(got), len(x))
    np.testing.assert_array_equal(got.view(np.float32), tf32(x))
    assert (got & 0x1FFF == 0).all()
    lib.t_bf16(p(x), p(got), len(x))
    lo = (got & 0xFFFF).astype(np.uint32) << 16
    hi = got & np.uint32(0xFFFF0000)
    np.testing.assert_array_equal(lo.view(np.float32), bf16(x))
    np.testing.assert_array_equal(hi.view(np.float32), bf16(-x))
    nan = np.array([np.nan, -np.nan, np.float32(np.uint32(0x7F800001).view(np.float32))],
                   np.float32)
    lib.t_tf32(p(nan), p(got), 3)
    assert np.isnan(got[:3].view(np.float32)).all()
    lib.t_bf16(p(nan), p(got), 3)
    assert np.isnan(((got[:3] & 0xFFFF) << 16).astype(np.uint32).view(np.float32)).all()


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_fragments(lib, num, trans):
    m = np.random.default_rng(num + 10 * trans).integers(0, 2**16, (num, 8, 8)).astype(np.uint16)
    out = np.zeros((32, num), np.uint32)
    assert lib.t_ldmatrix(num, int(trans), p(m), p(out)) == 0
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(num):
            lo, hi = ((m[i, 2 * t, g], m[i, 2 * t + 1, g]) if trans
                      else (m[i, g, 2 * t], m[i, g, 2 * t + 1]))
            assert out[lane, i] == int(lo) | int(hi) << 16, (lane, i)


def run_mma(lib, bf, K, src, a_kmajor, b_kmajor, rng, scale=1.0):
    A = (rng.standard_normal((16, K)) * scale).astype(np.float32)
    B = rng.standard_normal((K, 8)).astype(np.float32)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    D = np.full((16, 8), np.nan, np.float32)
    assert lib.t_mma(int(bf), K, src, a_kmajor, b_kmajor, p(A), p(B), p(C), p(D)) == 0
    r = bf16 if bf else tf32
    ref = r(A).astype(np.float64) @ r(B).astype(np.float64) + C
    return D, ref


@pytest.mark.parametrize("bf", [False, True], ids=["tf32", "bf16"])
@pytest.mark.parametrize("K", [16, 64])
def test_single_warp_mma_against_numpy(lib, bf, K):
    """Fragments by formula, and by ldmatrix from all four operand layouts."""
    rng = np.random.default_rng(K + bf)
    for src, ak, bk in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 0, 1), (1, 1, 1)]:
        D, ref = run_mma(lib, bf, K, src, ak, bk, rng)
        err = np.linalg.norm(D - ref) / np.linalg.norm(ref)
        assert err <= 1e-5, f"src {src} a_kmajor {ak} b_kmajor {bk}: rel err {err:.2e}"


def test_mma_rounds_its_operands_and_propagates_nan(lib):
    """Against the unrounded operands the error is far above the bound (so the test above
    would see a rounding slip), and NaN/Inf propagate through the accumulation."""
    rng = np.random.default_rng(7)
    for bf in (False, True):
        A = rng.standard_normal((16, 16)).astype(np.float32)
        B = rng.standard_normal((16, 8)).astype(np.float32)
        C = np.zeros((16, 8), np.float32)
        D = np.zeros((16, 8), np.float32)
        assert lib.t_mma(int(bf), 16, 1, 0, 0, p(A), p(B), p(C), p(D)) == 0
        unrounded = A.astype(np.float64) @ B
        assert np.linalg.norm(D - unrounded) / np.linalg.norm(unrounded) > 1e-4
    A = rng.standard_normal((16, 8)).astype(np.float32)
    B = rng.standard_normal((8, 8)).astype(np.float32)
    A[3, 2], B[5, 6] = np.nan, np.inf
    C = np.zeros((16, 8), np.float32)
    D = np.zeros((16, 8), np.float32)
    assert lib.t_mma(0, 8, 1, 0, 0, p(A), p(B), p(C), p(D)) == 0
    with np.errstate(invalid="ignore"):
        ref = tf32(A).astype(np.float64) @ tf32(B).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(D), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(D), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(D[fin], ref[fin], rtol=1e-5, atol=1e-5)


def test_cp_async_groups_land_at_their_wait(lib):
    g = np.arange(1, 65, dtype=np.float32)
    out = np.full(192, 99, np.float32)
    assert lib.t_cp_async(p(g), p(out)) == 0
    before, first, after = out[:64], out[64:128], out[128:]
    assert (before == -1).all(), "the emulator copies at the wait, not at the issue"
    want = g.copy()
    want[30:32] = 0                      # src-size 8 of 16: zero fill
    want[60:64] = 0                      # src-size 0: zeros
    np.testing.assert_array_equal(first[:32], want[:32])
    assert (first[32:] == -1).all()      # group 1 not waited for yet
    np.testing.assert_array_equal(after, want)


@pytest.mark.parametrize("which,message", [
    (0, "has exited"), (1, "DIVERGENT WARP COLLECTIVE"), (2, "waits at __syncthreads()")])
def test_warp_deadlocks_abort(builds, which, message):
    d, jobs = builds
    jobs["abort"].check()
    r = subprocess.run([str(d / "abort"), str(which)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "kernel returned" not in r.stdout
    assert message in r.stderr, r.stderr


def test_nvcc_emits_tensor_core_ptx(builds):
    d, jobs = builds
    if "sm_90" not in jobs:
        pytest.skip("nvcc not found: cannot compile the CUDA wrappers on this machine")
    for arch in ("sm_80", "sm_90"):
        jobs[arch].check()
        ptx = (d / f"ptx_{arch}.ptx").read_text()
        for instr in ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                      "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                      "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
                      "cp.async.cg.shared.global", "cp.async.ca.shared.global",
                      "cp.async.wait_group", "cvt.rna.tf32.f32", "cvt.rn.bf16x2.f32",
                      "shfl.sync.bfly"):
            assert instr in ptx, f"{instr} missing from the {arch} PTX"
