"""GEMM tile sizes for ``templates/c/gemm.c.j2``, chosen for the ISA the compiler targets and
the host's caches (the decisions; the template holds the code).

- the register tile (``mr`` × ``nr``) follows the vector ISA the flags make the compiler
  target (asked from the compiler itself, so ``-march=native``, ``-march=x86-64-v3`` or a
  cross target all get a tile that fits their registers);
- the cache blocks follow the host's L1/L2 sizes (``/sys/devices/system/cpu/cpu0/cache``):
  the A sliver (``mr`` × ``kc``) fills at most a quarter of L1 (the rest holds the B rows
  streaming through; with a narrow tile the A and B slivers together at most three
  quarters), the packed B block (``kc`` × ``nc``) at most half of L2;
- the thresholds (``dot_max_m``: ``nt`` products with at most this many rows skip
  packing, ``dot_long_max_m`` the same for rows longer than ``dot_max_k``, past which the
  8 + 3 rows of a dot-product block no longer fit in L1 together (at most
  ``dot_aliased_max_m`` there for rows a multiple of 4 KiB apart); ``direct_max_m``:
  ``nn``/``tn`` products with at most this many rows read B in place, if B's ``K`` × ``N``
  floats fill at most half of L2: ``direct_max_kn``) come from a short measurement
  on the host (see :mod:`.c_tune`) or, without it, from defaults;
- ``far_floats``: an operand of more floats than this (four times L2's bytes) lies beyond
  the caches, where the hardware prefetcher alone does not keep up: the dot path fetches
  such a B ahead of its loads, and products with a short K such a C;
- whether ``nt``/``nn`` pack A, whose rows run along k (``pack_a_min_n``: from that many
  columns on, 0 never), follows the register count of the ISA.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from .build import compiler

#: register tiles per vector ISA: (mr, nr). AVX-512: 8 × 48 keeps 24 accumulators,
#: 3 B vectors and a broadcast in 32 registers (two FMA ports need ≥ 8 independent
#: accumulators; 24 leave room for load latency) and reads 3 B vectors per 8 broadcasts.
#: AVX2/AVX and 4-wide vectors: 6 × 16 (12 accumulators of 16 registers).
REGISTER_TILES = {"avx512": (8, 48), "avx2": (6, 16), "avx": (6, 16), "vec4": (6, 16),
                  "scalar": (4, 16)}
#: ``nt``/``nn`` products with at least this many columns pack A (0: never). With 16
#: vector registers the kernel reading A in place keeps its MR row offsets on the stack;
#: packing A measured 2–7 % faster there from 128 columns (8 column tiles) on and slower
#: below. The AVX-512 kernel keeps them in registers and gains nothing from the copy.
PACK_A_MIN_N = {"avx512": 0, "avx2": 128, "avx": 128, "vec4": 128, "scalar": 0}
#: the row counts (1 to this) of a last partial sliver of rows that have a kernel of their
#: own, instead of a padded tile of MR rows (6 % on dX at 64 rows with MR = 6, 8 times the
#: work for a batch of one with MR = 8); more rows run in parts, the largest first. Every
#: count below MR = 6; with MR = 8 up to 4 (5 to 7 rows as 4 + the rest: these four add 13 %
#: to the compile time of an MLP step's build, all seven would add 45 %)
ROW_KERNELS = {"avx512": 4, "avx2": 5, "avx": 5, "vec4": 5, "scalar": 0}
#: the defaults the thresholds take without a measurement
DEFAULT_DOT_MAX_M = 16
DEFAULT_DOT_LONG_MAX_M = 16
#: the most rows ``nt`` takes the dot path for at long rows that lie a multiple of 4 KiB
#: apart (all 8 + 3 rows of a block in the same L1 sets); not measured: the tune's long rows
#: are not aliased
DOT_ALIASED_MAX_M = 16
DEFAULT_DIRECT_MAX_M = 64
#: cache sizes assumed when the host does not say (bytes)
DEFAULT_CACHES = {"L1": 32 * 1024, "L2": 1024 * 1024, "L3": 8 * 1024 * 1024}

#: the tiles before any host information: what tests and docs may use as a fixed point
TILES = {"mr": 8, "nr": 48, "kc": 384, "mc": 1536, "nc": 480, "direct_max_m": 64,
         "direct_max_kn": 262144, "dot_max_m": 16, "dot_max_k": 744, "dot_long_max_m": 16,
         "dot_aliased_max_m": 16, "far_floats": 1048576, "pack_a_min_n": 0,
         "row_kernels": 4}


def code_flags(flags: Sequence[str]) -> list[str]:
    """The flags of ``flags`` that can change the generated machine code (target, optimization,
    language, macros): warnings, debug info, paths and ``-fopenmp`` (the GEMMs measured on
    one thread) are left out."""
    return [f for f in flags if f.startswith(("-m", "-f", "-O", "-std", "-D", "-U"))
            and f != "-fopenmp"]


@cache
def _predefined(cc: str, flags: tuple[str, ...]) -> frozenset[str]:
    """The macros ``cc`` predefines with ``flags`` (empty if it cannot tell)."""
    keep = code_flags(flags)
    try:
        res = subprocess.run([cc, *keep, "-dM", "-E", "-x", "c", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(ln.split()[1] for ln in res.stdout.splitlines()
                     if ln.startswith("#define ") and len(ln.split()) > 1)


def target_isa(cflags: Sequence[str]) -> str:
    """The vector ISA that ``cflags`` make the C compiler target: ``avx512``, ``avx2``,
    ``avx``, ``vec4`` (SSE, NEON, ...; 4 floats) or ``scalar``."""
    if any(f.startswith("-D") and "LC_GEMM_PORTABLE" in f for f in cflags):
        return "scalar"
    machine = [f for f in cflags if f.startswith("-m")]
    if machine == ["-march=native"] and platform.machine() in ("x86_64", "AMD64"):
        flags = _host_flags()   # the common case, without running the compiler
        if flags:
            return _isa({"avx512f": "__AVX512F__", "avx2": "__AVX2__", "fma": "__FMA__",
                         "avx": "__AVX__", "sse": "__SSE__"}, flags)
    macros = _predefined(compiler(), tuple(cflags))
    if "__GNUC__" not in macros:   # not GCC-compatible (or cannot tell): plain C
        return "scalar"
    return _isa(None, macros)


def _isa(names: dict[str, str] | None, have: frozenset[str]) -> str:
    """The ISA from predefined macros (or CPU flags mapped to them by ``names``)."""
    macros = {names[f] for f in have if f in names} if names else have
    if "__AVX512F__" in macros:
        return "avx512"
    if "__AVX2__" in macros and "__FMA__" in macros:
        return "avx2"
    if "__AVX__" in macros:
        return "avx"
    if {"__SSE__", "__ARM_NEON", "__ALTIVEC__", "__VSX__"} & macros:
        return "vec4"
    return "scalar"


@cache
def _host_flags() -> frozenset[str]:
    """The host CPU's feature flags from /proc/cpuinfo (empty if unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@cache
def host_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict[str, int]:
    """Data-cache sizes of the host's first CPU (``L1``, ``L2``, ``L3`` in bytes), with
    :data:`DEFAULT_CACHES` for any it does not report."""
    out = dict(DEFAULT_CACHES)
    for d in sorted(Path(root).glob("index*")):
        try:
            level = int((d / "level").read_text())
            kind = (d / "type").read_text().strip()
            size = _size((d / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and 1 <= level <= 3 and size > 0:
            out[f"L{level}"] = size
    return out


def blocking(mr: int, nr: int, caches: dict[str, int]) -> dict[str, int]:
    """``kc``, ``mc``, ``nc`` for an ``mr`` × ``nr`` tile and these cache sizes."""
    kc = caches["L1"] // 4 // (4 * mr) // 64 * 64   # the A sliver: a quarter of L1
    # A narrow tile's B sliver can share L1 with the A sliver: then the two together
    # fill at most three quarters of it, so the B sliver streaming past does not evict
    # the A sliver every tile reads again (AVX2 6 x 16 on a 48 KiB L1: kc 512 -> 384,
    # nn at 1024 x 2048 x 2048 2-3 % faster). A wide tile's B sliver (AVX-512 8 x 48)
    # streams from L2 at any kc worth having (under 256: more C traffic than it saves).
    shared = caches["L1"] * 3 // 4 // (4 * (mr + nr)) // 64 * 64
    if shared >= 256:
        kc = min(kc, shared)
    kc = max(128, min(512, kc))
    nc = caches["L2"] // 2 // (4 * kc) // nr * nr   # the packed B block: half of L2
    nc = max(nr, min(nc, 4096 // nr * nr))
    mc = max(mr, 1536 // mr * mr)
    return {"kc": kc, "mc": mc, "nc": nc, "direct_max_kn": caches["L2"] // 8,
            "dot_max_k": caches["L1"] // (4 * (8 + 3)),   # a dot block's rows share L1
            # a B of more floats (four times L2's bytes) comes from L3 or memory
            "far_floats": caches["L2"]}


def gemm_tiles(cflags: Sequence[str], tune: bool | None = None) -> dict[str, int]:
    """The template variables of ``gemm.c.j2`` for code built with ``cflags`` on this host.

    ``tune`` (default: unless ``LINCOMPILE_TUNE=0``) measures the three thresholds once per
    host CPU, compiler and flags and caches the result (:func:`.c_tune.thresholds`)."""
    isa = target_isa(cflags)
    mr, nr = REGISTER_TILES[isa]
    tiles = {"mr": mr, "nr": nr, **blocking(mr, nr, host_caches()),
             "direct_max_m": DEFAULT_DIRECT_MAX_M, "dot_max_m": DEFAULT_DOT_MAX_M,
             "dot_long_max_m": DEFAULT_DOT_LONG_MAX_M, "dot_aliased_max_m": DOT_ALIASED_MAX_M,
             "pack_a_min_n": PACK_A_MIN_N[isa], "row_kernels": ROW_KERNELS[isa]}
    if tune is None:
        tune = os.environ.get("LINCOMPILE_TUNE", "1") != "0"
    if tune and isa != "scalar":   # plain C has no dot path and little to gain
        from .c_tune import thresholds

        tiles.update(thresholds(cflags, tiles, dot=isa == "avx512"))
    return tiles
