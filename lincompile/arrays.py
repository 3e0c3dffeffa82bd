"""Host arrays on 64-byte lines: what the generated C kernels read fastest.

numpy's own allocations start 16, 32 or 48 bytes past a cache line about as often as not;
every 64-byte vector load of such an array then spans two lines, which costs hosts with
full-width AVX-512 loads (Zen 5: the MLP step about 3 µs per such weight or batch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALIGN = 64   #: bytes: one cache line, one AVX-512 vector


def empty_aligned(shape: tuple[int, ...], dtype: Any, align: int = ALIGN) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts at a multiple of ``align``."""
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dt).reshape(shape)


def aligned_copy(a: Any) -> np.ndarray:
    """A C-contiguous copy of ``a`` on a 64-byte line (a new array, never ``a`` itself)."""
    a = np.asarray(a)
    out = empty_aligned(a.shape, a.dtype)
    out[...] = a
    return out


def aligned_full(shape: tuple[int, ...], fill: Any, dtype: Any) -> np.ndarray:
    """``np.full(shape, fill, dtype)`` on a 64-byte line."""
    out = empty_aligned(tuple(shape), dtype)
    out[...] = fill
    return out
