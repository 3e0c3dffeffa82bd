"""The sm_90a tensor-core path: wgmma + TMA (templates/cuda/gemm_mma.cu.j2) and its emulation
(templates/cuda/cuda_cpu.h).

(a) The emulator's building blocks against layouts written out here from the PTX ISA text, not
    from the emulator's code: TMA boxes (128-byte swizzle as "16-byte chunk c of box row r lands
    at chunk c ^ (r % 8)", zero fill out of bounds, negative coordinates, the mbarrier phase they
    complete); wgmma from shared-memory images laid out by the canonical layouts (K-major and
    MN-major with 128-byte swizzle, K-major without swizzle and its leading / stride byte
    offsets, k slices by start address), descriptors built bit by bit, accumulators mapped back
    by the documented D fragment layout, against float64 products (bf16 exact, tf32 with the
    low 13 bits dropped); a wrong swizzle fails; accumulators change only at the wait; an
    mbarrier that never completes, or wgmma without wgmma.fence, aborts with a clear message.
(b) lc_mma_gemm on the emulator with the wgmma kernels enabled (emulator tiles): every layout
    in bf16, the K-major tf32 layout (the others fall back to mma.sync), tile-edge shapes,
    the epilogue variants, NaN / Inf, misaligned tf32 rows falling back; a launch counter shows
    which kernel ran.
(c) Python's choice: sm_90a gets the wgmma kernels, sm_80 / sm_90 and LINCOMPILE_WGMMA=0 do
    not; nvcc -arch=sm_90a: the PTX holds wgmma.mma_async and cp.async.bulk.tensor, ptxas
    reports no spills for the wgmma kernels.
(d) On a GPU (skipped without one): lc.compile(..., "cuda") products at 4096 and tile-edge
    shapes against float64 products of operands rounded as each kernel reads them.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cuda_kernels import Job, parse_ptxas
from test_cuda_mma import bf16, tf32
from test_cuda_precision import ACTS, KINDS, Lib, as_bf16, operands, rel, render_mma

import lincompile as lc
from lincompile.backends import cuda
from lincompile.backends.cuda_build import find_nvcc

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent / "templates"
FLAGS = ["-std=c++20", "-O1", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi", "-fPIC",
         "-fno-gnu-unique"]
COUNTER = ("static long long lc_wgmma_count = 0;\n"
           'extern "C" long long t_wgmma_count() { return lc_wgmma_count; }\n'
           "#define LC_WGMMA_NOTE() (++lc_wgmma_count)\n")


def tf32_rz(x):
    """fp32 → what the tensor cores read as tf32 from shared memory: low 13 bits dropped."""
    return (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def tiny() -> lc.Graph:
    g = lc.Graph("g")
    g.output(g.matmul(g.input("a", ["N", 8]), g.input("b", [8, 8])), name="y")
    return g.verify()


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("lc_wgmma")
    shutil.copy(TEMPLATES / "cuda" / "cuda_cpu.h", d / "cuda_cpu.h")
    shutil.copy(HERE / "cuda_wgmma_wrappers.cu", d / "blocks.cpp")
    (d / "gemm_mma.cu").write_text(render_mma(wgmma=cuda.WGMMA_EMU_TILES))
    (d / "counter.h").write_text(COUNTER)
    shutil.copy(HERE / "cuda_mma_wrappers.cu", d / "gemm.cpp")
    out = {}
    if shutil.which("g++"):
        out["blocks"] = Job(["g++", *FLAGS, "-shared", "-include", "cuda_cpu.h", "blocks.cpp",
                             "-o", "blocks.so"], d, "g++ (sm_90 building blocks)")
        out["gemm"] = Job(["g++", *FLAGS, "-shared", "-include", "cuda_cpu.h", "-include",
                           "counter.h", "-I", ".", "gemm.cpp", "-o", "gemm.so"], d,
                          "g++ (wgmma GEMMs)")
    nvcc = find_nvcc()
    if nvcc:
        src = cuda._CudaSource({"forward": tiny()}, "m", "sm_90a", cuda.GPU_TILES,
                               precision="bf16")
        (d / "lib90a.cu").write_text('#include "cuda_cpu.h"\n' + src.library() + "\n")
        ptxas = Path(nvcc).parent / "ptxas"
        out["sm_90a"] = Job(["bash", "-c", f"{nvcc} -std=c++17 -O3 -arch=sm_90a -ptx lib90a.cu "
                             f"-o lib90a.ptx && {ptxas} -arch=sm_90a -v lib90a.ptx "
                             "-o lib90a.cubin"], d, "nvcc + ptxas sm_90a")
    yield d, out
    for j in out.values():
        j.stop()


@pytest.fixture(scope="module")
def blocks(jobs):
    d, js = jobs
    if "blocks" not in js:
        pytest.skip("g++ not available")
    js["blocks"].check()
    L = ctypes.CDLL(str(d / "blocks.so"))
    vp, ll, i = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    L.t_wgmma.argtypes = [i, i, i, i, vp, ll, ctypes.c_uint64, ctypes.c_uint64, vp, vp]
    L.t_tma.argtypes = [vp, ll, ll, ll, i, i, i, i, i, i, i, ll, vp, vp]
    return L


@pytest.fixture(scope="module")
def gemm(jobs):
    d, js = jobs
    if "gemm" not in js:
        pytest.skip("g++ not available")
    js["gemm"].check()
    lib = Lib(d / "gemm.so")
    lib.L.t_wgmma_count.restype = ctypes.c_longlong
    return lib


# ------------------------------------------------ (a) layouts from the PTX ISA, in Python
def desc(start: int, lbo: int, sbo: int, swizzle: int) -> int:
    """Matrix descriptor (PTX ISA, wgmma "Matrix Descriptor Format"): bits 13-0 start address,
    29-16 leading dimension byte offset, 45-32 stride dimension byte offset, each encoded
    (x & 0x3FFFF) >> 4; bits 63-62 swizzle mode (0 none, 1 128B, 2 64B, 3 32B)."""
    mode = {0: 0, 128: 1, 64: 2, 32: 3}[swizzle]
    enc = lambda x: (x & 0x3FFFF) >> 4
    return enc(start) | enc(lbo) << 16 | enc(sbo) << 32 | mode << 62


def raw_bits(x: np.ndarray, esize: int) -> np.ndarray:
    """Elements as little-endian bytes: bf16 (the high half of the float32) or fp32."""
    u = np.asarray(x, np.float32).view(np.uint32)
    return (u >> 16).astype("<u2") if esize == 2 else u.astype("<u4")


def place(img: np.ndarray, base: int, mat: np.ndarray, esize: int, layout: str, lbo: int = 0,
          sbo: int = 0, swizzle: bool = True) -> None:
    """Write mat [MN rows][K cols] into img as the PTX ISA's shared-memory layouts describe.
    k128: K-major 128B swizzle: atoms of 8 rows of 128 bytes, atoms SBO apart along MN; in
          row r of an atom, 16-byte chunk c is stored at chunk c ^ r.
    mn128: MN-major 128B swizzle: atoms of 8 k-rows of 128 bytes (128 / esize MN elements),
          SBO apart along K, LBO apart along MN; the same chunk permutation by k-row.
    k_none: K-major without swizzle: core matrices of 8 rows x 16 bytes (row-major, 128
          bytes), LBO apart along K, SBO apart along MN."""
    bits = raw_bits(mat, esize)
    per = 16 // esize
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if layout == "k128":
                r, byte = i % 8, j * esize
                chunk = (byte // 16) ^ r if swizzle else byte // 16
                off = (i // 8) * sbo + r * 128 + chunk * 16 + byte % 16
            elif layout == "mn128":
                r, byte = j % 8, (i % (128 // esize)) * esize
                chunk = (byte // 16) ^ r if swizzle else byte // 16
                off = ((i // (128 // esize)) * lbo + (j // 8) * sbo + r * 128 + chunk * 16
                       + byte % 16)
            else:
                off = (i // 8) * sbo + (j // per) * lbo + (i % 8) * 16 + (j % per) * esize
            img[base + off:base + off + esize] = np.frombuffer(bits[i, j].tobytes(), np.uint8)


def d_from_fragments(out: np.ndarray, n: int) -> np.ndarray:
    """D [64][n] from each thread's registers (PTX ISA, wgmma .m64nNk16 / .m64nNk8 D layout:
    thread t of the warpgroup holds rows 16 (t / 32) + (t % 32) / 4 (+ 8), columns
    8 j + 2 (t % 4) (+ 1), register 4 j + 2 h + e)."""
    D = np.zeros((64, n))
    for t in range(128):
        w, g, q = t // 32, (t % 32) // 4, t % 4
        for i in range(n // 2):
            D[16 * w + g + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * q + i % 2] = out[t, i]
    return D


def run_wgmma(blocks, prec, n, ta, tb, img, da, db, rng):
    c = rng.standard_normal((128, n // 2)).astype(np.float32)
    out = np.full((2, 128, n // 2), np.nan, np.float32)
    assert blocks.t_wgmma(2 if prec == "bf16" else 1, n, ta, tb, img.ctypes.data, img.size, da,
                          db, c.ctypes.data, out.ctypes.data) == 0
    np.testing.assert_array_equal(out[1], c)   # before the wait: the old accumulators
    return d_from_fragments(out[0], n), d_from_fragments(c, n)


def operands_of(rng, rows, cols, prec):
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    return bf16(x) if prec == "bf16" else x   # tf32: raw fp32, low bits set


def value(x, prec):
    return (bf16(x) if prec == "bf16" else tf32_rz(x)).astype(np.float64)


@pytest.mark.parametrize("prec", ["bf16", "tf32"])
def test_wgmma_k_major_128b_swizzle_k_slices(blocks, prec):
    """A [64 x one 128-byte row of K] and B [64 x the same] as TMA writes them; each k slice
    (16 bf16 / 8 tf32 = 32 bytes) selected by the descriptors' start addresses."""
    rng = np.random.default_rng(1)
    E = 2 if prec == "bf16" else 4
    kw = 128 // E
    A, B = operands_of(rng, 64, kw, prec), operands_of(rng, 64, kw, prec)
    img = np.zeros(16384, np.uint8)
    place(img, 0, A, E, "k128", sbo=1024)
    place(img, 8192, B, E, "k128", sbo=1024)
    ks = 32 // E
    for kk in range(4):
        D, C = run_wgmma(blocks, prec, 64, 0, 0, img, desc(kk * 32, 16, 1024, 128),
                         desc(8192 + kk * 32, 16, 1024, 128), rng)
        sl = slice(kk * ks, kk * ks + ks)
        ref = value(A[:, sl], prec) @ value(B[:, sl], prec).T + C
        assert np.abs(D - ref).max() <= 1e-5 * np.abs(ref).max(), (prec, kk)
    # the same image without the chunk permutation: the decode notices
    place(img, 0, A, E, "k128", sbo=1024, swizzle=False)
    D, C = run_wgmma(blocks, prec, 64, 0, 0, img, desc(32, 16, 1024, 128),
                     desc(8192 + 32, 16, 1024, 128), rng)
    ref = value(A[:, ks:2 * ks], prec) @ value(B[:, ks:2 * ks], prec).T + C
    assert np.abs(D - ref).max() > 1e-2


def test_wgmma_bf16_mn_major_and_leading_byte_offset(blocks):
    """bf16 A and B MN-major (imm-trans 1) with 128-byte swizzle as TMA boxes of 64 elements
    per k row write them; k slices of 16 rows by start address; B 128 wide spans two atoms
    LBO apart (and a K-major A beside it)."""
    rng = np.random.default_rng(2)
    A, B = operands_of(rng, 64, 64, "bf16"), operands_of(rng, 64, 64, "bf16")   # [mn][k]
    img = np.zeros(16384, np.uint8)
    place(img, 0, A, 2, "mn128", lbo=8192, sbo=1024)
    place(img, 8192, B, 2, "mn128", lbo=8192, sbo=1024)
    for kk in range(4):
        D, C = run_wgmma(blocks, "bf16", 64, 1, 1, img, desc(kk * 2048, 8192, 1024, 128),
                         desc(8192 + kk * 2048, 8192, 1024, 128), rng)
        sl = slice(16 * kk, 16 * kk + 16)
        ref = value(A[:, sl], "bf16") @ value(B[:, sl], "bf16").T + C
        assert np.abs(D - ref).max() <= 1e-5 * np.abs(ref).max(), kk
    B2 = operands_of(rng, 128, 64, "bf16")
    img = np.zeros(8192 + 16384, np.uint8)
    place(img, 0, A, 2, "k128", sbo=1024)
    place(img, 8192, B2, 2, "mn128", lbo=8192, sbo=1024)
    D, C = run_wgmma(blocks, "bf16", 128, 0, 1, img, desc(96, 16, 1024, 128),
                     desc(8192 + 3 * 2048, 8192, 1024, 128), rng)
    ref = value(A[:, 48:64], "bf16") @ value(B2[:, 48:64], "bf16").T + C
    assert np.abs(D - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("prec,n", [("bf16", 16), ("tf32", 24)])
def test_wgmma_k_major_without_swizzle(blocks, prec, n):
    """Core matrices of 8 rows x 16 bytes placed by the descriptors' leading (K) and stride
    (M/N) byte offsets, which differ between A and B."""
    rng = np.random.default_rng(3)
    E = 2 if prec == "bf16" else 4
    k = 32 // E
    A, B = operands_of(rng, 64, k, prec), operands_of(rng, n, k, prec)
    img = np.zeros(8192, np.uint8)
    place(img, 0, A, E, "k_none", lbo=256, sbo=512)
    place(img, 4096, B, E, "k_none", lbo=128, sbo=256)
    D, C = run_wgmma(blocks, prec, n, 0, 0, img, desc(0, 256, 512, 0), desc(4096, 128, 256, 0),
                     rng)
    ref = value(A, prec) @ value(B, prec).T + C
    assert np.abs(D - ref).max() <= 1e-5 * np.abs(ref).max()
    if prec == "tf32":   # the low 13 bits are ignored, not rounded
        rounded = tf32(A).astype(np.float64) @ tf32(B).astype(np.float64).T + C
        assert np.abs(D - rounded).max() > 1e-5 * np.abs(ref).max()


def tma_expected(g, esize, box0, box1, c0, c1, dst, nbytes, swizzle):
    img = np.full(nbytes - 8, 0xAB, np.uint8)
    bits = raw_bits(g, esize)
    zero = np.zeros(1, bits.dtype)[0]
    for r in range(box1):
        for c in range(box0):
            y, x = c1 + r, c0 + c
            v = bits[y, x] if 0 <= y < g.shape[0] and 0 <= x < g.shape[1] else zero
            byte = r * box0 * esize + c * esize
            if swizzle == 128:   # chunk c of 128-byte row r goes to chunk c ^ (r % 8)
                row, chunk = byte // 128, (byte % 128) // 16
                byte = row * 128 + (chunk ^ (row % 8)) * 16 + byte % 16
            img[dst + byte:dst + byte + esize] = np.frombuffer(v.tobytes(), np.uint8)
    return img


@pytest.mark.parametrize("esize,swizzle,box,coords,dst", [
    (4, 128, (32, 8), (30, 36), 1024),     # past the right and bottom edges
    (2, 128, (64, 10), (0, -2), 2048),     # negative row coordinate
    (4, 0, (8, 3), (45, 1), 128),          # no swizzle, a narrow box
])
def test_tma_box_swizzle_zero_fill_and_phase(blocks, esize, swizzle, box, coords, dst):
    rng = np.random.default_rng(4)
    rows, cols, ld = 40, 50, 56
    g = np.zeros((rows, ld), np.float32)
    g[:, :cols] = rng.standard_normal((rows, cols))
    g = bf16(g) if esize == 2 else g
    store = raw_bits(g, esize).copy()   # the global matrix as the copy reads it
    nbytes = 8192
    out = np.zeros(nbytes - 8, np.uint8)
    flags = np.array([-1, -1, 0, box[0] * box[1] * esize], np.int32)
    assert blocks.t_tma(store.ctypes.data, rows, cols, ld, esize, swizzle, box[0], box[1],
                        coords[0], coords[1], dst, nbytes, out.ctypes.data,
                        flags.ctypes.data) == 0
    want = tma_expected(g[:, :cols], esize, *box, *coords, dst, nbytes, swizzle)
    np.testing.assert_array_equal(out, want)
    assert flags[0] == 1 and flags[1] == 1


@pytest.mark.parametrize("fn,message", [("t_stuck", "MBARRIER DEADLOCK"),
                                        ("t_unfenced", "before any wgmma.fence")])
def test_misuse_aborts_with_a_message(jobs, blocks, fn, message):
    """An mbarrier phase that never completes; wgmma.mma_async without wgmma.fence first."""
    d, _ = jobs
    r = subprocess.run([sys.executable, "-c", "import ctypes, sys; "
                        f"ctypes.CDLL({str(d / 'blocks.so')!r}).{fn}(); print('returned')"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "returned" not in r.stdout
    assert message in r.stderr, r.stderr


# ---------------------------------------------------------- (b) lc_mma_gemm with wgmma
WG = cuda.WGMMA_EMU_TILES


def product(gemm, prec, kind, M, N, K, rng, **kw):
    """C and the reference of operands rounded as the kernel reads them (wgmma tf32: low bits
    dropped; mma.sync tf32: rounded to nearest; bf16: the bf16 copies); wgmma launches."""
    ta, tb = KINDS[kind]
    A, B = operands(rng, ta, tb, M, N, K)
    C = kw.pop("C", np.full((M, N), np.nan, np.float32))
    if prec == "bf16":
        lda, ldb = -(-A.shape[1] // 8) * 8, -(-B.shape[1] // 8) * 8
        a, b = as_bf16(A, lda), as_bf16(B, ldb)
    else:
        a, b, lda, ldb = A, B, A.shape[1], B.shape[1]
    before = gemm.L.t_wgmma_count()
    assert gemm.gemm(prec, ta, tb, M, N, K, a, lda, b, ldb, C, N, **kw) == 0
    launched = gemm.L.t_wgmma_count() - before
    r = bf16 if prec == "bf16" else (tf32_rz if launched else tf32)
    a64, b64 = r(A).astype(np.float64), r(B).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = (a64.T if ta else a64) @ (b64.T if tb else b64)
    return C, ref, launched


@pytest.mark.parametrize("prec", ["bf16", "tf32"])
@pytest.mark.parametrize("kind", ["nt", "nn", "tn", "tt"])
def test_products_on_wgmma_at_tile_edges(gemm, prec, kind):
    rng = np.random.default_rng(5)
    for M, N, K in [(64, 64, 32), (130, 100, 152), (65, 127, 200), (200, 70, 40)]:
        C, ref, launched = product(gemm, prec, kind, M, N, K, rng)
        assert launched == (1 if prec == "bf16" or kind == "nt" else 0), (kind, M, N, K)
        assert rel(C, ref) <= 1e-5, f"{prec} {kind} {M}x{N}x{K}: {rel(C, ref):.2e}"
    # below the thresholds: mma.sync
    _, _, launched = product(gemm, prec, kind, 63, 100, 100, rng)
    assert launched == 0


def test_tf32_rows_not_16_byte_aligned_stay_on_mma_sync(gemm):
    rng = np.random.default_rng(6)
    C, ref, launched = product(gemm, "tf32", "nt", 100, 80, 150, rng)   # 600-byte rows
    assert launched == 0 and rel(C, ref) <= 1e-5
    C, ref, launched = product(gemm, "tf32", "nt", 100, 80, 152, rng)
    assert launched == 1 and rel(C, ref) <= 1e-5


@pytest.mark.parametrize("prec", ["bf16", "tf32"])
def test_wgmma_epilogue_alpha_beta_bias_activation_and_bf16_copy(gemm, prec):
    rng = np.random.default_rng(7)
    M, N, K = 97, 75, 64
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    lr = np.array([0.25], np.float32)
    for act in range(4):
        cb = np.full((M, 80), 0xFFFF, np.uint16)
        C, prod, launched = product(gemm, prec, "nt", M, N, K, np.random.default_rng(act),
                                    C=c0.copy(), alpha=-2.0, alpha_dev=lr, beta=0.5, bias=bias,
                                    act=act, Cb=cb, ldcb=80)
        assert launched == 1
        ref = ACTS[act](-0.5 * prod + bias + 0.5 * c0.astype(np.float64))
        assert rel(C, ref) <= 1e-5, act
        np.testing.assert_array_equal(cb[:, :N], as_bf16(C, N))
        assert (cb[:, N:] == 0).all()


def test_wgmma_nan_and_inf_propagate(gemm):
    rng = np.random.default_rng(8)
    M, N, K = 70, 64, 64
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((N, K)).astype(np.float32)
    A[3, 5], A[7, 2], B[4, 9] = np.nan, np.inf, -np.inf
    bias = np.zeros(N, np.float32)
    bias[2] = np.nan
    for prec in ("bf16", "tf32"):
        a, b = (as_bf16(A, K), as_bf16(B, K)) if prec == "bf16" else (A, B)
        r = bf16 if prec == "bf16" else tf32_rz
        with np.errstate(invalid="ignore"):
            ref = ACTS[1](r(A).astype(np.float64) @ r(B).astype(np.float64).T + bias)
        C = np.zeros((M, N), np.float32)
        before = gemm.L.t_wgmma_count()
        assert gemm.gemm(prec, False, True, M, N, K, a, K, b, K, C, N, bias=bias, act=1) == 0
        assert gemm.L.t_wgmma_count() == before + 1
        np.testing.assert_array_equal(np.isnan(C), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(C), np.isinf(ref))
        fin = np.isfinite(ref)
        assert rel(C[fin], ref[fin]) <= 1e-5


# ------------------------------------------------------------------ (c) Python and nvcc
def test_wgmma_chosen_for_sm90a_only(monkeypatch):
    assert cuda.mma_tiles("sm_90a", "bf16")["wgmma"] == cuda.WGMMA_GPU_TILES
    for arch in ("sm_80", "sm_90", "sm_100"):
        assert cuda.mma_tiles(arch, "tf32")["wgmma"] is None
    g = tiny()
    lib = cuda._CudaSource({"forward": g}, "m", "sm_90a", cuda.GPU_TILES,
                           precision="tf32").library()
    assert "lc_wgmma_kernel" in lib and "M < 128 || N < 128 || K < 64" in lib
    assert "lc_wgmma_kernel" not in cuda._CudaSource(
        {"forward": g}, "m", "sm_90", cuda.GPU_TILES, precision="tf32").library()
    monkeypatch.setenv("LINCOMPILE_WGMMA", "0")
    assert cuda.mma_tiles("sm_90a", "bf16")["wgmma"] is None
    assert "lc_wgmma_kernel" not in cuda._CudaSource(
        {"forward": g}, "m", "sm_90a", cuda.GPU_TILES, precision="bf16").library()
    if not cuda.gpu_available():   # the default architecture without a GPU is sm_90
        assert cuda.default_arch("tf32") == "sm_90"
        monkeypatch.delenv("LINCOMPILE_WGMMA")
        assert cuda.default_arch("bf16") == "sm_90a" and cuda.default_arch() == "sm_90"


def test_written_sources_build_for_sm90a_in_tf32_and_bf16(tmp_path, monkeypatch):
    """`lincompile compile --target cuda` / write_cuda_sources: the Makefile's default ARCH is
    sm_90a where the wgmma kernels are wanted, sm_90 otherwise; --arch wins."""
    monkeypatch.delenv("LINCOMPILE_WGMMA", raising=False)
    g = tiny()

    def arch(**kw) -> str:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        cuda.write_cuda_sources({"forward": g}, out, **kw)
        return next(ln.split()[-1] for ln in (out / "Makefile").read_text().splitlines()
                    if ln.startswith("ARCH ?="))

    assert arch() == "sm_90" and arch(precision="bf16") == "sm_90a"
    assert arch(precision="tf32", arch="sm_80") == "sm_80"
    monkeypatch.setenv("LINCOMPILE_WGMMA", "0")
    assert arch(precision="tf32") == "sm_90"


def test_nvcc_sm90a_ptx_has_wgmma_and_tma_without_spills(jobs):
    d, js = jobs
    if "sm_90a" not in js:
        pytest.skip("nvcc not found: cannot compile the CUDA sources on this machine")
    info = parse_ptxas(js["sm_90a"].check())
    ptx = (d / "lib90a.ptx").read_text()
    t, b = cuda.WGMMA_GPU_TILES["tf32"], cuda.WGMMA_GPU_TILES["bf16"]
    for instr in (f"wgmma.mma_async.sync.aligned.m64n{b['bn']}k16.f32.bf16.bf16",
                  f"wgmma.mma_async.sync.aligned.m64n{t['bn']}k8.f32.tf32.tf32",
                  "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes",
                  "mbarrier.try_wait.parity.shared::cta.b64", "mbarrier.arrive.expect_tx",
                  "wgmma.fence.sync.aligned", "wgmma.commit_group.sync.aligned",
                  "wgmma.wait_group.sync.aligned", "mma.sync.aligned.m16n8k16"):
        assert instr in ptx, f"{instr} missing from the sm_90a PTX"
    wg = {k: v for k, v in info.items() if "lc_wgmma_kernel" in k[0]}
    assert len(wg) == 5, sorted(info)   # bf16: 4 layouts; tf32: K-major only
    for (fn, _), v in wg.items():
        assert v.get("spill_st") == 0 and v.get("stack") == 0, (fn, v)
        assert v["regs"] <= 65536 // (2 * 128 + 32), (fn, v)   # one block of 288 threads


# --------------------------------------------------------------------------- (d) the GPU
def gpu_graph(c_in: int, c_out: int) -> lc.Graph:
    """y = relu(x.W^T + b) (nt), dx = y.W (nn), dw = y^T.x (tn)."""
    g = lc.Graph(f"p{c_in}x{c_out}")
    x, w, b = g.input("x", ["N", c_in]), g.input("w", [c_out, c_in]), g.input("b", [c_out])
    y = g.output(g.relu(g.apply("linear", [x, w, b])), name="y")
    g.output(g.matmul(y, w), name="dx")
    g.output(g.matmul(y, x, trans_a=True), name="dw")
    return g.verify()


@pytest.mark.skipif(not cuda.gpu_available(), reason="needs a CUDA GPU (sm_90 for wgmma)")
@pytest.mark.parametrize("prec", ["bf16", "tf32"])
def test_gpu_products_on_wgmma_against_float64(prec):
    """On the GPU (sm_90a build): the three products at 4096 and at tile-edge shapes against
    float64 products of the operands as the kernels read them: bf16 copies; tf32 y on wgmma
    (low bits dropped), tf32 dx, dw on mma.sync (rounded). Bound 1e-5 relative (5e-5 at
    4096: fp32 accumulation over K = 4096)."""
    torch = pytest.importorskip("torch")
    if cuda.default_arch(prec) != "sm_90a":
        pytest.skip(f"the device is {cuda.device_arch()}, not sm_90 (or LINCOMPILE_WGMMA=0)")
    for (c_in, c_out), n in [((4096, 4096), 4096), ((776, 1000), 1029), ((777, 390), 333)]:
        g = gpu_graph(c_in, c_out)
        exe = lc.compile(g, "cuda", precision=prec)
        feeds = lc.random_feeds(g, n, seed=1)
        got = exe.run(feeds)

        def rd(x, wgmma):
            x = np.asarray(x, np.float32)
            r = bf16 if prec == "bf16" else (tf32_rz if wgmma else tf32)
            return torch.from_numpy(r(x).astype(np.float64)).cuda()

        nt_on_wgmma = c_in % 4 == 0 or prec == "bf16"
        X, W = rd(feeds["x"], nt_on_wgmma), rd(feeds["w"], nt_on_wgmma)
        Y = torch.relu(X @ W.T + torch.from_numpy(feeds["b"].astype(np.float64)).cuda())
        errs = {"y": rel(got["y"], Y.cpu().numpy())}
        Yr, Wr, Xr = rd(got["y"], False), rd(feeds["w"], False), rd(feeds["x"], False)
        errs["dx"] = rel(got["dx"], (Yr @ Wr).cpu().numpy())
        errs["dw"] = rel(got["dw"], (Yr.T @ Xr).cpu().numpy())
        tol = 5e-5 if n >= 4096 else 1e-5
        assert max(errs.values()) <= tol, (prec, c_in, c_out, n, errs)
        if prec == "tf32" and nt_on_wgmma:   # and not the rounded reference: wgmma ran
            Y2 = torch.relu(rd(feeds["x"], False) @ rd(feeds["w"], False).T
                            + torch.from_numpy(feeds["b"].astype(np.float64)).cuda())
            assert rel(got["y"], Y2.cpu().numpy()) > 2 * tol, (c_in, c_out, n)


def test_environment_switch_is_documented():
    assert any("LINCOMPILE_WGMMA" in p.read_text() for p in (HERE.parent / "docs").glob("*.md"))
