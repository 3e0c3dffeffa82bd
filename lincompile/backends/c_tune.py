"""A short measurement of three GEMM thresholds on this host, once per (CPU, compiler, the
flags that change the code, tiles), cached beside the build cache in
``<cache>/tune/<key>.json``.

- ``dot_max_m``: ``nt`` products (``Y = X·Wᵀ``) with at most this many rows compute dot
  products of the rows as they are; above it B is packed (transposed) once per call. Where
  the crossing lies depends on the core (FMA ports, L2 bandwidth), so it is measured, on a
  narrow and a wide layer (:data:`WIDTHS`): rows go on taking the dot path while it is
  clearly faster at one of them and not clearly slower at the other.
- ``dot_long_max_m``: the same for rows longer than ``dot_max_k`` (the 8 + 3 rows of a
  dot-product block then no longer fit in L1 together), measured at :data:`LONG_K`: a core
  whose FMAs outrun L2 (Zen 5) loses there what it gains at short rows; one with half the
  FMA rate (Zen 4) gains there too.
- ``direct_max_m``: ``nn``/``tn`` products with at most this many rows read B in place.

The measurement builds one small library (through the build cache), times both paths at a
few row counts on fixed-size products, interleaved, taking medians of per-thread CPU time
(so other load on the machine disturbs it little), and takes the largest row count up to
which the unpacked path is clearly faster (by :data:`MARGIN`: near the crossing both paths
run within a few per cent of each other, and timing noise would otherwise move the choice
from one measurement to the next; the margin makes a repeated measurement on the same host
give the same answer). It takes a second or two, once; the choice is then read from the
cache, so it is the same for every later build. ``LINCOMPILE_TUNE=0`` skips
it (defaults: :data:`.c_tiles.DEFAULT_DOT_MAX_M`, :data:`.c_tiles.DEFAULT_DOT_LONG_MAX_M`,
:data:`.c_tiles.DEFAULT_DIRECT_MAX_M`).
A failure to build or run the measurement falls back to the defaults; ``lincompile cache
clear`` forgets the choices (they are measured again at the next build).
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..arrays import aligned_copy, empty_aligned
from ..errors import CompileError
from .build import (
    build_cached,
    cache_key,
    cc_line,
    compiler,
    compiler_id,
    host_cpu,
    load_library,
    tune_dir,
)
from .c_tiles import code_flags
from .render import render

VERSION = "8"   # bump when the measurement changes: old cached choices are then ignored
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SIZE = 512      # N = K of the timed nt products (W of 512 × 512: 1 MiB)
#: K of the timed long-row nt products (N = SIZE): rows 8000 bytes apart, not a multiple
#: of 4 KiB (those share L1 sets, and the template caps them at dot_aliased_max_m)
LONG_K = 2000
#: N of the timed short-row nt products: a narrow layer (where the packed path's last
#: partial tile weighs most) and a wide one, each judged on its own; at 64 rows the dot
#: path's lead over packing ranges from 11 % to none across such widths. Timing one width
#: alone put the crossing at 16, 32 or 64 rows from one measurement to the next, and so did
#: the two widths' times summed (a lead near the margin at 64 rows)
WIDTHS = (128, SIZE)
DIRECT_K = 128  # K of the timed nn products (N = SIZE; B of 256 KiB: the direct path's case)
#: the measured thresholds, ``<name>_max_m`` each, with the product that times them (0 nt,
#: 1 nn); the generated code reads each from ``int lc_tune_<name>`` in the measurement
TIMED = {"dot": 0, "dot_long": 0, "direct": 1}
KNOBS = tuple(f"{name}_max_m" for name in TIMED)
#: the unpacked path is taken at a row count only where it takes at most this fraction of
#: the packed path's time at some timed shape, and at most the packed time over this
#: fraction at every one
MARGIN = 0.95
_LOCK = threading.Lock()
_MEMO: dict[Path, dict[str, int]] = {}

HARNESS = r"""
#include <time.h>
/* Seconds of this thread's CPU time per call of op (0 nt, 1 nn), the median of `rounds`
 * timings of `reps` calls each. */
double lc_tune_time(int op, int M, int N, int K, const float *A, const float *B, float *C,
                    float *pack, int rounds, int reps)
{
    double t[64];
    int r, i, j;
    rounds = rounds > 64 ? 64 : rounds;
    for (r = 0; r < rounds; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
        for (i = 0; i < reps; i++) {
            if (op == 0)
                lc_gemm_nt(M, N, K, 1.0f, A, K, B, K, 0.0f, C, N, NULL, 0, pack, 1);
            else
                lc_gemm_nn(M, N, K, 1.0f, A, K, B, N, 0.0f, C, N, NULL, 0, pack, 1);
        }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
        t[r] = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    }
    for (i = 1; i < rounds; i++)   /* insertion sort: the median */
        for (j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return t[rounds / 2] / reps;
}
"""


def _source(tiles: dict) -> str:
    names = [f"lc_tune_{name}" for name in TIMED]
    gemm = render("c/gemm.c.j2", None, **{**tiles, **dict(zip(KNOBS, names))})
    return f"#define _POSIX_C_SOURCE 199309L\nint {', '.join(names)};\n" + gemm + HARNESS


def _crossing(time_unpacked, time_packed, always: int = 0) -> int:
    """The largest row count of :data:`ROWS`, scanning up, up to which the unpacked path is
    faster than the packed one by :data:`MARGIN` at some shape and slower by no more than
    that at any (0 if not already at one row). The timers return a time per shape, or one
    time. A decision near the crossing can then cost at most the margin at any shape,
    while one taken on a sum of shapes could lose more at one than it gained at another.
    Row counts up to ``always`` take the unpacked path whatever the threshold."""
    best = 0
    for m in ROWS:   # the median of 5 alternating timings of each: drift hits both alike
        if m <= always:
            best = m
            continue
        runs = [(np.atleast_1d(time_unpacked(m)), np.atleast_1d(time_packed(m)))
                for _ in range(5)]
        a, b = (np.median([r[i] for r in runs], axis=0) for i in (0, 1))
        if not ((a <= b * MARGIN).any() and (a * MARGIN <= b).all()):
            break
        best = m
    return best


def measure(cflags: Sequence[str], tiles: dict, dot: bool = True) -> dict[str, int]:
    """Time both paths of each threshold on this host (see the module docstring)."""
    flags = code_flags(cflags)   # what the cache key holds (one thread is measured)
    files = {"tune.c": _source(tiles)}
    cmd = cc_line(flags, "tune.c", "libtune.so")
    key = cache_key(files, cmd, compiler_id(cmd[0]), host_cpu())
    lib = load_library(build_cached(key, files, cmd, "libtune.so", "tune.c"))
    fn = lib.lc_tune_time
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p] * 4 + [ctypes.c_int] * 2
    knob = {name: ctypes.c_int.in_dll(lib, f"lc_tune_{name}") for name in TIMED}
    # the (N, K) of each measurement: short rows (within dot_max_k) at both widths, long
    # rows (past it), nn
    short = max(16, min(SIZE, tiles["dot_max_k"]) // 16 * 16)
    shapes = {"dot": [(n, short) for n in WIDTHS],
              "dot_long": [(SIZE, max(LONG_K, tiles["dot_max_k"] + 512))],
              "direct": [(SIZE, DIRECT_K)]}
    rng = np.random.default_rng(0)
    m_max, k_max = max(ROWS), max(k for v in shapes.values() for _, k in v)
    # on 64-byte lines, as the generated code's own buffers are (numpy's large arrays start
    # 16 bytes past one, where each 64-byte load of the dot path spans two lines: measured
    # so on Zen 5, the dot path ran 64 x 128 x 784 at 135 GFLOP/s instead of 206, and the
    # crossing came out 32 or 64 from one process to the next)
    a = aligned_copy(rng.standard_normal((m_max, k_max)).astype(np.float32))
    b = aligned_copy(rng.standard_normal((SIZE, k_max)).astype(np.float32))
    c = empty_aligned((m_max, SIZE), np.float32)
    mc, kc, nc = tiles["mc"], tiles["kc"], tiles["nc"]
    pack = empty_aligned((mc * kc + nc * kc + 64,), np.float32)
    ptr = lambda x: x.ctypes.data

    def timer(op: int, name: str, on: bool):
        def run(m: int) -> list[float]:   # seconds per call, at each shape
            knob[name].value = 1 << 30 if on else 0
            return [fn(op, m, n, k, ptr(a), ptr(b), ptr(c), ptr(pack), 7,
                       max(1, int(2e6 / (m * n * k / 16)))) for n, k in shapes[name]]
        return run

    out = {k: tiles[k] for k in KNOBS}
    for name, op in TIMED.items():
        if op == 0 and not dot:
            continue
        run_on, run_off = timer(op, name, True), timer(op, name, False)
        run_on(8), run_off(8)   # warm up
        # nn/tn read B in place for two slivers of rows whatever direct_max_m says
        out[f"{name}_max_m"] = _crossing(run_on, run_off, 2 * tiles["mr"] if op else 0)
    return out


def cache_path(cflags: Sequence[str], tiles: dict) -> Path:
    """Where the choice for ``cflags`` and ``tiles`` (thresholds aside) is cached."""
    base = {k: v for k, v in tiles.items() if k not in KNOBS}
    flags = code_flags(cflags)   # warnings or -fopenmp do not change what is measured
    key = cache_key({"tiles": json.dumps(base, sort_keys=True)}, flags, VERSION,
                    compiler_id(compiler()), host_cpu())
    return tune_dir() / f"{key}.json"


def thresholds(cflags: Sequence[str], tiles: dict, dot: bool = True) -> dict[str, int]:
    """``dot_max_m``, ``dot_long_max_m`` and ``direct_max_m`` for this host: from the
    cache, else measured (and cached); the defaults in ``tiles`` if the measurement cannot
    run. ``dot``: whether the target has the dot-product path at all (else its defaults
    stay)."""
    path = cache_path(cflags, tiles)
    with _LOCK:   # one measurement per process at a time (threads compiling at once wait)
        if path in _MEMO:
            return _MEMO[path]
        try:
            got = json.loads(path.read_text())
            _MEMO[path] = {k: int(got[k]) for k in KNOBS}
            return _MEMO[path]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            got = measure(cflags, tiles, dot)
        except (CompileError, OSError):
            return {k: tiles[k] for k in KNOBS}
        _MEMO[path] = got
        _save(path, got, cflags, tiles)
    return got


def _save(path: Path, got: dict, cflags: Sequence[str], tiles: dict) -> None:
    """Write the choice where :func:`cache_path` says, atomically (a reader sees all of it
    or none); an unwritable cache is left alone (the process keeps its choice in memory)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tune-")
        with os.fdopen(fd, "w") as f:
            json.dump({**got, "cflags": list(cflags),
                       "tiles": {k: v for k, v in tiles.items() if k not in KNOBS}}, f)
        os.replace(tmp, path)
    except OSError:
        pass
