"""Sizes past 2^31 in generated C and CUDA.

Products of dimensions are 64-bit everywhere; only the GEMMs take single dimensions as C
ints, and a batch they cannot take is a FeedError (a fixed dimension, a CompileError).

- The sources of graphs whose tensors pass 2^31 elements are rendered (not run) and
  searched for narrowing casts, int sizes and 32-bit index arithmetic.
- The CUDA reductions' split into chunks is checked for n > 2^32 through the very helpers
  the kernels use (compiled with the CPU emulator): the chunks cover [0, n) once.
- The CUDA GEMMs split tall products into slabs of rows (grid.y is limited): run with the
  limit lowered to 2 row tiles, every slab must land in its place.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import jinja2
import numpy as np
import pytest

import lincompile as lc
from lincompile.backends.c import write_c_sources
from lincompile.backends.c_kernels import MAX_GEMM_DIM, Limit
from lincompile.backends.cuda import EMU_FLAGS, write_cuda_sources
from lincompile.backends.cuda_kernels import MAX_GRID, MAX_THREADS
from lincompile.backends.plan import Size
from lincompile.backends.render import templates_dir

INT_MAX = 2**31 - 1


def big_forward() -> lc.Graph:
    """A fixed [70000, 40000] input (2.8e9 elements) through every kind of kernel."""
    g = lc.Graph("big")
    x = g.input("x", [70000, 40000])
    g.output(g.relu(g.linear(x, 20, name="fc")), "y")
    g.output(g.reduce_sum(x), "total")
    g.output(g.reduce_sum(x, axes=[0]), "cols")
    g.output(g.reduce_sum(x, axes=[1]), "rows")
    g.output(g.sigmoid(x), "sx")
    g.output(g.mul(x, g.input("scale", [70000, 1])), "scaled")
    return g


def wide_training(loss: str, opt) -> lc.Graph:
    """A symbolic batch N with 70000 features: N · 70000 passes 2^31 from N = 30679."""
    g = lc.Graph(f"wide_{loss}")
    h = g.tanh(g.linear(g.input("x", ["N", 70000]), 40, name="fc1"))
    g.output(g.linear(h, 3, name="fc2"))
    return lc.training_graph(g, loss, opt)


GRAPHS = {"big": big_forward(), "wide_ce": wide_training("cross-entropy", lc.Adam(0.01)),
          "wide_mse": wide_training("mse", lc.SGD(0.1, momentum=0.9))}


def entry_code(source: str) -> str:
    """The model's own code: from its first entry point on (the GEMM/reduction library and
    the baked parameters come before)."""
    start = re.search(r"/\* -+ model_\w+: ", source)
    assert start, "no entry point found"
    return source[start.start():]


def narrowing(code: str, casts: bool = True) -> list[str]:
    """Spots in ``code`` where a size could be cut to 32 bits (``casts``: any cast to a 32-bit
    type counts, except of the batch, which is checked before the run)."""
    code = re.sub(r"/\*.*?\*/|//[^\n]*", " ", code, flags=re.S)   # comments do not count
    found = []
    # a cast to a 32-bit type of anything but the batch `bn` (a single dimension, checked
    # before the run) or a thread index: (int)(a * b), (unsigned)n, ...
    for m in re.finditer(r"\((int|unsigned|unsigned int|int32_t|uint32_t|short)\)\s*(\(|\w+)",
                         code):
        if casts and m.group(2) not in ("bn", "threadIdx"):
            found.append(m.group(0))
    # a variable declared int/unsigned and initialised from an expression with a product
    found += re.findall(r"\b(?:int|unsigned)\s+\w+\s*=[^;]*\*[^;]*;", code)
    # a block index multiplied before it is widened
    found += re.findall(r"(?<!\(size_t\))\bblockIdx\.[xyz]\s*\*", code)
    # an integer literal past INT_MAX that is not a size_t
    for m in re.finditer(r"(?<![\w.])(\d{10,})(?![\w.])", code):
        if int(m.group(1)) > INT_MAX and not code[:m.start()].endswith("(size_t)"):
            found.append(m.group(0))
    return found


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    out = {}
    for name, g in GRAPHS.items():
        d = tmp_path_factory.mktemp(name)
        entry = "train_step" if name != "big" else "forward"
        write_c_sources({entry: g}, d / "c")
        write_cuda_sources({entry: g}, d / "cuda")
        out[name] = {"c": (d / "c" / "model.c").read_text(),
                     "cuda": (d / "cuda" / "model.cu").read_text()}
    return out


@pytest.mark.parametrize("lang", ["c", "cuda"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_generated_code_keeps_products_64_bit(sources, name, lang):
    src = sources[name][lang]
    code = entry_code(src)
    assert narrowing(code) == [], f"{name} ({lang}): 32-bit sizes in the generated code"
    if name == "big":   # the 2.8e9-element extents reach the kernels whole
        assert "(size_t)2800000000" in code
    if lang == "cuda":
        lib = src[:src.index("#endif /* LC_REDUCE_DEFINED */")]
        lib = lib[lib.index("#define LC_REDUCE_DEFINED"):]   # the reduction library
        # (its casts to unsigned are of clamped counts: grid sizes, partials)
        assert narrowing(lib, casts=False) == [], "32-bit sizes in the reduction library"
        assert re.search(r"cudaError_t lc_sum\(size_t n,", src)
        assert re.search(r"cudaError_t lc_colsum\(size_t rows, size_t cols, const float\* X, "
                         r"size_t ldx,", src)
        assert re.search(r"lc_sum_kernel\(size_t n,", lib)
        assert re.search(r"lc_colsum_kernel\(size_t R, size_t C,", lib)
        assert "LC_CHECK(lc_sum((int)" not in code and "lc_colsum((int)" not in code
    else:   # the GEMM pack area is sized in size_t arithmetic from the batch itself
        assert "size_t lc_gemm_pack_floats(long M, long N, long K)" in src
        packs = [line for line in code.splitlines() if "lc_gemm_pack_floats(" in line]
        assert packs, "the GEMM pack area is sized in the workspace layout"
        for line in packs:
            assert "(int)" not in line, line


def test_the_checks_catch_narrowing():
    """The source checks above flag each pattern they are meant to (so they can fail)."""
    bad = ["lc_sum((int)(70000 * bn), x);", "const int n = 40 * bn;",
           "x[blockIdx.x * blockDim.x + threadIdx.x]", "for (i = 0; i < 2800000000; i++)",
           "(unsigned)(rows * cols)"]
    for line in bad:
        assert narrowing(line), line
    ok = ["lc_gemm_nt((int)bn, 3, 4)", "(size_t)blockIdx.x * blockDim.x",
          "i < (size_t)2800000000", "(int)threadIdx.x < w"]
    for line in ok:
        assert not narrowing(line), line


# ---------------------------------------------------------------- limits at feed time
def test_a_batch_past_the_gemm_int_range_is_a_feed_error():
    g = lc.Graph("m")
    g.output(g.linear(g.input("x", ["N", 3]), 2, name="fc"))
    for target in ("c", "cuda-cpu"):
        exe = lc.compile(g, target)
        fits = np.broadcast_to(np.float32(0), (MAX_GEMM_DIM, 3))   # shape only, no memory
        assert exe.batch({"x": fits}) == MAX_GEMM_DIM
        huge = np.broadcast_to(np.float32(0), (MAX_GEMM_DIM + 1, 3))
        with pytest.raises(lc.FeedError, match=rf"N={MAX_GEMM_DIM + 1} .*'{target}'.*"
                                               rf"tensor 'x'.*N ≤ {MAX_GEMM_DIM}"):
            exe.batch({"x": huge})


def test_cuda_grid_limits_are_feed_errors():
    g = lc.Graph("wide")
    x = g.input("x", ["N", 2**31])   # one thread per element: N · 2^31 ≤ MAX_THREADS
    g.output(g.relu(x))
    exe = lc.compile(g, "cuda-cpu")
    most = MAX_THREADS // 2**31
    assert exe.batch({"x": np.broadcast_to(np.float32(0), (most, 2**31))}) == most
    with pytest.raises(lc.FeedError, match="tensor 'relu'.*one thread per element"):
        exe.batch({"x": np.broadcast_to(np.float32(0), (most + 1, 2**31))})

    g = lc.Graph("rows")   # one block per row of the cross-entropy
    z = g.input("z", ["N", 3])
    g.output(g.softmax_cross_entropy(z, g.input("labels", ["N"], "int64")))
    exe = lc.compile(g, "cuda-cpu")
    rows = {"z": np.broadcast_to(np.float32(0), (MAX_GRID + 1, 3)),
            "labels": np.broadcast_to(np.int64(0), (MAX_GRID + 1,))}
    with pytest.raises(lc.FeedError, match="tensor 'z'.*rows"):
        exe.batch(rows)


def test_a_fixed_dimension_past_the_gemm_int_range_is_a_compile_error():
    g = lc.Graph("tall")
    g.output(g.linear(g.input("x", [MAX_GEMM_DIM + 1, 1]), 2, name="fc"))
    for target in ("c", "cuda-cpu"):
        with pytest.raises(lc.CompileError, match=rf"node 'fc': tensor 'x' has a dimension "
                                                  rf"of {MAX_GEMM_DIM + 1}"):
            lc.compile(g, target)


def test_limit_max_batch():
    assert Limit("t", Size(70000, 1), 2**31 - 1, "").max_batch() == (2**31 - 1) // 70000
    assert Limit("t", Size(3, 2), 10**6, "").max_batch() == 577   # 3 · 577² ≤ 1e6 < 3 · 578²
    assert Limit("t", Size(5), 10, "").max_batch() == 2**63 - 1   # fixed, fits: no bound
    assert Limit("t", Size(11), 10, "").max_batch() == -1         # fixed, too large


# ------------------------------------------------------------ compiled reduction helpers
HELPERS = r"""
#include "gemm.cu"
#include "reduce.cu"
extern "C" {
unsigned t_sum_parts(size_t n, int two_pass) { return lc_sum_parts(n, two_pass != 0); }
unsigned t_colsum_chunks(size_t rows, int two_pass) {
    return lc_colsum_chunks(rows, two_pass != 0);
}
size_t t_ceil_div(size_t n, size_t k) { return lc_ceil_div(n, k); }
size_t t_begin(size_t b, size_t per, size_t n) { return lc_chunk_begin(b, per, n); }
size_t t_end(size_t b, size_t per, size_t n) { return lc_chunk_end(b, per, n); }
int t_gemm(int ta, int tb, int M, int N, int K, float alpha, const float* alpha_dev,
           const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc,
           const float* bias, int act) {
    return (int)lc_gemm_ex(ta != 0, tb != 0, M, N, K, alpha, alpha_dev, A, lda, B, ldb, beta,
                           C, ldc, bias, act, (cudaStream_t)0);
}
}
"""
SLAB_ROWS = 2 * 32   # LC_GEMM_MAX_GRID_Y = 2 row tiles of bm = 32 rows


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    d = tmp_path_factory.mktemp("reduce_helpers")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined)
    (d / "gemm.cu").write_text(env.get_template("cuda/gemm.cu.j2").render(
        bm=32, bn=32, bk=8, tm=4, tn=4))
    (d / "reduce.cu").write_text(env.get_template("cuda/reduce.cu.j2").render())
    (d / "helpers.cpp").write_text(HELPERS)
    shutil.copy(templates_dir() / "cuda" / "cuda_cpu.h", d / "cuda_cpu.h")
    cmd = ["g++", *EMU_FLAGS, "-DLC_GEMM_MAX_GRID_Y=2", "-fPIC", "-shared", "-include",
           "cuda_cpu.h", "helpers.cpp", "-o", "helpers.so"]
    res = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(d / "helpers.so"))
    sz, u, i, f, pf = (ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_float,
                       ctypes.POINTER(ctypes.c_float))
    for name, res_t, args in (("t_sum_parts", u, [sz, i]), ("t_colsum_chunks", u, [sz, i]),
                              ("t_ceil_div", sz, [sz, sz]), ("t_begin", sz, [sz, sz, sz]),
                              ("t_end", sz, [sz, sz, sz]),
                              ("t_gemm", i, [i, i, i, i, i, f, pf, pf, i, pf, i, f, pf, i, pf,
                                             i])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res_t, args
    return lib


def chunks(lib, n: int, parts: int) -> list[tuple[int, int]]:
    per = lib.t_ceil_div(n, parts)
    return [(lib.t_begin(b, per, n), lib.t_end(b, per, n)) for b in range(parts)]


def assert_cover(spans: list[tuple[int, int]], n: int, what: str) -> None:
    """The spans are in order, empty or not, and cover [0, n) with each element once."""
    pos = 0
    for b, (lo, hi) in enumerate(spans):
        assert lo == pos and lo <= hi <= n, f"{what}: chunk {b} is [{lo}, {hi}) after {pos}"
        pos = hi
    assert pos == n, f"{what}: the chunks end at {pos}, not {n}"


SIZES = [0, 1, 16383, 16384, 16385, 2**24 + 1000, 2**31 - 1, 2**31 + 1, 2**32 - 1, 2**32,
         2**32 + 1, 3 * 2**32 + 12345, 2**40 + 7, 2**50 - 3]


def test_sum_chunks_cover_every_element_once_past_2_32(helpers):
    for n in SIZES:
        parts = helpers.t_sum_parts(n, 1)
        assert 1 <= parts <= 1024 and (n <= 16384 * 1024 or parts == 1024)
        assert_cover(chunks(helpers, n, parts), n, f"lc_sum n={n}")
        assert helpers.t_sum_parts(n, 0) == 1
        assert_cover(chunks(helpers, n, 1), n, f"lc_sum one pass n={n}")


def test_colsum_chunks_cover_every_row_once_past_2_32(helpers):
    for rows in SIZES:
        k = helpers.t_colsum_chunks(rows, 1)
        assert 1 <= k <= 64 and (rows <= 512 * 64 or k == 64)
        assert_cover(chunks(helpers, rows, k), rows, f"lc_colsum rows={rows}")


@pytest.mark.parametrize("ta,tb", [(False, True), (False, False), (True, False), (True, True)])
def test_gemm_runs_tall_products_in_slabs(helpers, ta, tb):
    """M = 3 slabs and a ragged one (the grid.y limit lowered to 2 row tiles), with bias,
    activation and a device-side alpha: every row lands where it belongs."""
    rng = np.random.default_rng(12)
    m, n, k = 3 * SLAB_ROWS + 7, 33, 20
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c, lr = c0.copy(), np.array([0.5], np.float32)

    def p(x):
        return x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    rc = helpers.t_gemm(ta, tb, m, n, k, -1.0, p(lr), p(a), a.shape[1], p(b), b.shape[1], 1.0,
                        p(c), n, p(bias), 3)   # tanh
    assert rc == 0, f"cudaError {rc}"
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = np.tanh(-0.5 * ((a64.T if ta else a64) @ (b64.T if tb else b64)) + bias + c0)
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-5)
