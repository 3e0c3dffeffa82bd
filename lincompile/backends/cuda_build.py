"""Toolchain and runtime of the CUDA targets: nvcc / g++ builds through the content-addressed
cache of :mod:`.build` (same layout, same write-then-rename), the CUDA runtime library loaded
with ctypes, and device discovery.

Nothing here needs a GPU: without one, :func:`gpu_available` is False, builds still work, and
:func:`cudart` is only loaded to report why no device was found.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from ..errors import CompileError, LincompileError
from .build import build_cached, cache_key


class CudaError(LincompileError):
    """A CUDA call failed, or no CUDA device (or runtime library) was found."""


# ----------------------------------------------------------------------- tools
def find_nvcc() -> str | None:
    """``$LINCOMPILE_NVCC``, ``$CUDA_HOME/bin/nvcc``, ``nvcc`` on the PATH, or the usual
    install folders; None when there is none."""
    env = os.environ.get("LINCOMPILE_NVCC")
    cands = [env] if env else []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "nvcc"))
    cands += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", *sorted(
        glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)]
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)


def nvcc() -> str:
    path = find_nvcc()
    if path is None:
        raise CompileError("nvcc not found (looked at $LINCOMPILE_NVCC, $CUDA_HOME/bin, PATH, "
                           "/usr/local/cuda*/bin): install the CUDA toolkit for target 'cuda', "
                           "or use target 'cuda-cpu', which needs only g++")
    return path


def cxx() -> str:
    return os.environ.get("CXX") or "g++"


@cache
def tool_id(tool: str) -> str:
    """``tool --version``: part of every cache key (a new compiler rebuilds everything)."""
    try:
        res = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"compiler '{tool}' cannot run ({e})") from None
    return res.stdout.strip() or res.stderr.strip()


def build(files: dict[str, str], cmd: list[str], output: str) -> Path:
    """``output``, made by running ``cmd`` in a folder holding ``files`` (name -> text), from
    the cache when it is there (key: the files, the command, the compiler's version).
    Failure: a CompileError with the compiler's message; the sources are kept."""
    return build_cached(cache_key(files, cmd, tool_id(cmd[0])), files, cmd, output)


# --------------------------------------------------------------------- runtime
def _cudart_candidates() -> list[str]:
    out = [os.environ.get("LINCOMPILE_CUDART", "")]
    tool = find_nvcc()
    if tool:   # the toolkit that builds the kernels
        root = Path(os.path.realpath(tool)).parent.parent
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            out += sorted(glob.glob(str(root / sub / "libcudart.so*")), reverse=True)
    found = ctypes.util.find_library("cudart")
    out.append(found or "")
    for site in sys.path:   # the nvidia-cuda-runtime wheel that torch / cupy bring
        out += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib",
                                             "libcudart.so*")), reverse=True)
    return [c for c in out if c]


@cache
def cudart() -> ctypes.CDLL:
    """The CUDA runtime library, with the few functions lincompile calls typed."""
    errors = []
    for cand in _cudart_candidates():
        try:
            lib = ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        raise CudaError("no CUDA device found: the CUDA runtime library (libcudart) is not "
                        "installed (set $LINCOMPILE_CUDART to its path)")
    vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    for fn, args in {"cudaGetDeviceCount": [ctypes.POINTER(i)],
                     "cudaMalloc": [ctypes.POINTER(vp), sz], "cudaFree": [vp],
                     "cudaMemcpy": [vp, vp, sz, i], "cudaMemset": [vp, i, sz],
                     "cudaMemsetAsync": [vp, i, sz, vp],
                     "cudaStreamSynchronize": [vp], "cudaDeviceSynchronize": [],
                     "cudaGetLastError": [],
                     "cudaDeviceGetAttribute": [ctypes.POINTER(i), i, i],
                     "cudaGetDevice": [ctypes.POINTER(i)],
                     # CUDA graphs (BoundCuda): capture a step once, replay it
                     "cudaStreamCreateWithFlags": [ctypes.POINTER(vp), ctypes.c_uint],
                     "cudaStreamDestroy": [vp], "cudaStreamBeginCapture": [vp, i],
                     "cudaStreamEndCapture": [vp, ctypes.POINTER(vp)],
                     "cudaGraphInstantiateWithFlags": [ctypes.POINTER(vp), vp,
                                                       ctypes.c_ulonglong],
                     "cudaGraphLaunch": [vp, vp], "cudaGraphExecDestroy": [vp],
                     "cudaGraphDestroy": [vp]}.items():
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, i
    lib.cudaGetErrorString.argtypes, lib.cudaGetErrorString.restype = [i], ctypes.c_char_p
    return lib


def error_string(code: int) -> str:
    try:
        return f"{cudart().cudaGetErrorString(code).decode()} (cudaError {code})"
    except (CudaError, AttributeError):
        return f"cudaError {code}"


def check(code: int, what: str) -> None:
    if code != 0:
        raise CudaError(f"{what} failed: {error_string(code)}")


@cache
def device_problem() -> str | None:
    """Why no CUDA device can be used here, or None when one can."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA device found: the NVIDIA driver (libcuda.so.1) is not installed"
    try:
        rt = cudart()
    except CudaError as e:
        return str(e)
    n = ctypes.c_int(0)
    code = rt.cudaGetDeviceCount(ctypes.byref(n))
    if code != 0 or n.value < 1:
        why = error_string(code) if code else "0 devices"
        return f"no CUDA device found: cudaGetDeviceCount says {why}"
    return None


def gpu_available() -> bool:
    """True when a CUDA device and runtime are usable (then target 'cuda' can run)."""
    return device_problem() is None


def require_device(entry: str) -> ctypes.CDLL:
    problem = device_problem()
    if problem:
        raise CudaError(f"{entry}: {problem}; the code compiled, but running it needs a GPU "
                        "(target 'cuda-cpu' runs the same kernels on the CPU)")
    return cudart()


@cache
def device_arch() -> str:
    """``sm_XY`` of the current device (CUDA runtime, else nvidia-smi), else ``sm_90``."""
    if gpu_available():
        rt, dev, major, minor = cudart(), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        rt.cudaGetDevice(ctypes.byref(dev))
        if (rt.cudaDeviceGetAttribute(ctypes.byref(major), 75, dev.value) == 0 and
                rt.cudaDeviceGetAttribute(ctypes.byref(minor), 76, dev.value) == 0):
            return f"sm_{major.value}{minor.value}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            cap = res.stdout.split()[0] if res.returncode == 0 and res.stdout.split() else ""
            if cap.replace(".", "").isdigit():
                return "sm_" + cap.replace(".", "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "sm_90"
