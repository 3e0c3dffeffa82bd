"""The CUDA backends: a graph → one ``.cu`` + header of CUDA kernels and host entry points.

``target="cuda"`` builds it with nvcc into a shared library and runs it on the GPU;
``target="cuda-cpu"`` builds the same source as C++ against ``templates/cuda/cuda_cpu.h``,
which emulates the CUDA execution model on the CPU (real ``__syncthreads`` barriers), so the
kernels can be checked anywhere.

>>> import lincompile as lc, numpy as np
>>> g = lc.Graph("m"); x = g.input("x", ["N", 2]); _ = g.output(g.relu(x))
>>> lc.compile(g, "cuda-cpu").run({"x": np.array([[-1, 2]], np.float32)})["relu"]
array([[0., 2.]], dtype=float32)

The generated entry points (``<prefix>_forward`` / ``<prefix>_train_step``, and
``<prefix>_workspace_size``) take device pointers, the batch size N, a device workspace and a
``cudaStream_t``, and return a ``cudaError_t``; :func:`write_cuda_sources` writes the
``.cu``, its header and a Makefile for use outside Python. float64 graphs are rejected with a
CompileError: the CUDA kernels are float32 (use the C backend for float64).
``precision="tf32"`` or ``"bf16"`` puts the Linear products on tensor cores (sm_80+, see
:func:`compile`), and :meth:`CudaExecutable.bind` replays a step from a CUDA graph.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import CompileError
from ..ir import Graph, Value
from .base import Executable, check_feeds
from .build import load_library
from .c import (
    Entry,
    Workspaces,
    _Source,
    check_batch,
    entry_name,
    max_batch,
    share_trained,
    write_files,
)
from .c_kernels import BatchLimit, CStep
from .cuda_build import (
    CudaError,
    build,
    check,
    cudart,
    cxx,
    device_arch,
    error_string,
    gpu_available,
    nvcc,
    require_device,
)
from .cuda_kernels import CudaContext, cuda_limits, emit_cuda, lower_cuda
from .precision import PRECISIONS, check_precision
from .render import CTYPES, c_comment, render, templates_dir, wrap_args

__all__ = ["PRECISIONS", "CudaError", "compile", "compile_cpu", "gpu_available",
           "write_cuda_sources"]

#: GEMM block/thread tiles and reduction block sizes on the GPU (templates/cuda/*.cu.j2).
GPU_TILES = {"bm": 128, "bn": 128, "bk": 8, "tm": 8, "tn": 8, "min_blocks": 2,
             "reduce_threads": 256, "block": 256}
#: Smaller tiles for the CPU emulation: every CUDA thread is a fiber, so fewer threads per
#: block run faster, and more blocks and edge tiles get exercised at test sizes.
EMU_TILES = {"bm": 32, "bn": 32, "bk": 8, "tm": 4, "tn": 4, "min_blocks": 2,
             "reduce_threads": 64, "block": 64}
#: Tensor-core GEMM tiles (templates/cuda/gemm_mma.cu.j2) per precision: block bm x bn x bk,
#: warp tile wm x wn, cp.async pipeline depth. 256 threads; 4 stages (80 KiB of shared memory
#: per block) on sm_80 / sm_90, 3 where a multiprocessor has only ~100 KiB (sm_86, sm_89, ...).
MMA_GPU_TILES = {"tf32": {"bm": 128, "bn": 128, "bk": 16, "wm": 64, "wn": 32, "stages": 4},
                 "bf16": {"bm": 128, "bn": 128, "bk": 32, "wm": 64, "wn": 32, "stages": 4}}
#: Small tiles for the CPU emulation: 4 warps of 16 x 16, three stages (the pipeline's
#: steady state and its drain both run at test sizes).
MMA_EMU_TILES = {"tf32": {"bm": 32, "bn": 32, "bk": 16, "wm": 16, "wn": 16, "stages": 3},
                 "bf16": {"bm": 32, "bn": 32, "bk": 32, "wm": 16, "wn": 16, "stages": 3}}
#: sm_90a tensor-core GEMMs for the large products (templates/cuda/gemm_mma.cu.j2, wgmma + TMA):
#: per precision a block tile bm x bn x bk (bm / 64 consumer warpgroups and one producer warp;
#: bk fills one 128-byte swizzle row) and a ring of `stages` (4 x 48 KiB of shared memory);
#: a product takes them when M >= min_m, N >= min_n and K >= min_k (and its layout and
#: alignment allow: tf32 reads K-major operands only, so only Y = X.W^T-shaped tf32 products).
WGMMA_GPU_TILES = {"tf32": {"bm": 128, "bn": 256, "bk": 32, "stages": 4},
                   "bf16": {"bm": 128, "bn": 256, "bk": 64, "stages": 4},
                   "min_m": 128, "min_n": 128, "min_k": 64}
#: The same kernels at test sizes for the emulator: one consumer warpgroup, 64 x 64 tiles.
WGMMA_EMU_TILES = {"tf32": {"bm": 64, "bn": 64, "bk": 32, "stages": 3},
                   "bf16": {"bm": 64, "bn": 64, "bk": 64, "stages": 3},
                   "min_m": 64, "min_n": 64, "min_k": 32}
#: The architecture whose builds get the wgmma kernels (wgmma is an sm_90a feature).
WGMMA_ARCH = "sm_90a"
#: cudaError_t codes that templates/cuda/cuda_cpu.h returns
EMU_ERRORS = {1: "invalid argument", 2: "out of memory", 9: "invalid configuration argument",
              17: "invalid device pointer", 21: "invalid copy direction for memcpy",
              719: "unspecified launch failure", 801: "operation not supported"}
NVCC_FLAGS = ("-O3", "-std=c++17")
#: -fno-gnu-unique: `__shared__` arrays are static locals of (template) kernels; as GNU
#: unique symbols, two emulated models loaded in one process (say with different GEMM tiles)
#: would share them.
EMU_FLAGS = ("-std=c++20", "-O1", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi", "-fno-gnu-unique")
#: The prebuilt GEMM/reduction library of the emulation (-O2 without IPA-CP: gcc 12 crashes
#: in that pass on the fiber launcher).
EMU_LIB_FLAGS = ("-std=c++20", "-O2", "-fno-ipa-cp", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi",
                 "-fno-gnu-unique")


def wgmma_enabled() -> bool:
    """False when ``$LINCOMPILE_WGMMA`` is ``0``: the tf32/bf16 products then stay on the
    mma.sync kernels on sm_90a too (a safety valve should the wgmma kernels misbehave)."""
    return os.environ.get("LINCOMPILE_WGMMA", "1").strip() != "0"


def mma_tiles(arch: str, precision: str) -> dict[str, Any]:
    """The tensor-core tiles for ``arch`` (a CompileError below sm_80, which has no tf32/bf16
    mma.sync or cp.async): mma.sync tiles per precision, and under ``wgmma`` the sm_90a
    kernels' tiles (None for other architectures, or with ``LINCOMPILE_WGMMA=0``)."""
    cap = "".join(ch for ch in arch.split("_", 1)[-1] if ch.isdigit())
    if not cap or int(cap) < 80:
        raise CompileError(f"precision '{precision}' needs tensor cores with tf32/bf16 "
                           f"(sm_80 or newer); arch is {arch}: use precision 'fp32'")
    tiles = (dict(MMA_GPU_TILES) if int(cap) in (80, 90, 100)
             else {p: dict(t, stages=3) for p, t in MMA_GPU_TILES.items()})
    tiles["wgmma"] = WGMMA_GPU_TILES if arch == WGMMA_ARCH and wgmma_enabled() else None
    return tiles


def default_arch(precision: str = "fp32") -> str:
    """The device's architecture (else ``sm_90``); for tf32/bf16 on an sm_90 device ``sm_90a``,
    the arch-specific target that the wgmma kernels need (its code runs on sm_90 only)."""
    arch = device_arch()
    if arch == "sm_90" and check_precision(precision) != "fp32" and wgmma_enabled():
        return WGMMA_ARCH
    return arch


def source_arch(precision: str = "fp32") -> str:
    """What written sources build for by default: ``sm_90``, or ``sm_90a`` for tf32/bf16 (the
    wgmma kernels; such a build runs on sm_90 devices only, pass another arch for others)."""
    return WGMMA_ARCH if check_precision(precision) != "fp32" and wgmma_enabled() else "sm_90"


def nvcc_line(arch: str, source: str = "model.cu", lib: str = "libmodel.so") -> list[str]:
    return ["nvcc", *NVCC_FLAGS, f"-arch={arch}", "-Xcompiler", "-fPIC", "-shared", source,
            "-o", lib]


def emu_line(source: str = "model.cu", lib: str = "libmodel_cpu.so") -> list[str]:
    return ["g++", *EMU_FLAGS, "-fPIC", "-shared", "-include", "cuda_cpu.h", "-x", "c++",
            source, "-o", lib]


class _CudaSource(_Source):
    """Renders the .cu/.h text of one or more graphs (entries) sharing constants."""

    PRECISIONS = PRECISIONS

    def __init__(self, graphs: Mapping[str, Graph], prefix: str, arch: str,
                 tiles: Mapping[str, int], init: bool = False, precision: str = "fp32",
                 mma: Mapping[str, Any] | None = None):
        self.arch, self.tiles, self._kernels = arch, dict(tiles), 0
        self.precision = check_precision(precision)
        self.mma = mma if mma is not None else (
            mma_tiles(arch, precision) if precision != "fp32" else MMA_GPU_TILES)
        super().__init__(graphs, prefix, [], 1, init, precision)

    def _entry(self, name: str, graph: Graph, init: bool) -> Entry:
        steps, params, plan, pids = self._layout(
            graph, lambda g: lower_cuda(g, self.precision))
        names: dict[str, str] = {}
        decls: list[str] = []
        for pid, k in dict(zip(pids, params)).items():   # device addresses of the constants
            ct = CTYPES[str(graph.params[k].data.dtype)].c
            decls.append(f"const {ct} *{pid} = NULL;")
            decls.append(f"LC_CHECK(cudaGetSymbolAddress((void **)&{pid}, {pid}_data));")

        def ptr(v: Value) -> str:
            st = plan.where[v.name]
            if st.kind in ("in", "out"):
                return f"{st.kind}{st.index}"
            if st.kind == "param":
                return pids[st.index]
            if v.name not in names:   # a slot: each tensor gets its own typed pointer
                names[v.name] = var = f"t{len(names)}"
                decls.append(f"{CTYPES[v.dtype].c} *{var} = ({CTYPES[v.dtype].c} *)"
                             f"(ws + off[{st.index}]);")
            return names[v.name]

        def scratch(step: CStep, i: int) -> str:
            return f"(ws + off[{plan.scratch[steps.index(step)][i]}])"

        ctx = CudaContext(ptr, scratch, self.bytecode, self.precision)
        kernels, body = [], []
        for k, s in enumerate(steps):
            if k in plan.views:
                continue
            em = emit_cuda(f"k{self._kernels}_{s.node.op}", s, ctx)
            self._kernels += 1
            kernels += em.kernels
            body.append({"comment": s.comment(), "code": em.host})
        text = self._text(name, graph, plan, ptr, init, layout=[s.c() for s in plan.slots],
                          decls=decls, steps=body, kernels=kernels)
        return Entry(name, graph, steps, plan, params, text, max_batch(graph, plan.slots))

    RETURNS = "cudaError_t"
    TRAILING = ("void *workspace", "cudaStream_t stream")

    def _copy(self, dst: str, src: str, size: str) -> str:
        return f"LC_CHECK(cudaMemcpyAsync({dst}, {src}, {size}, cudaMemcpyDeviceToDevice, stream));"

    def _init(self, name: str, graph: Graph) -> dict | None:
        state = [(i, v) for i, v in enumerate(graph.inputs) if v.name in graph.initial_state]
        if not state:
            return None
        args = [f"{CTYPES[v.dtype].c} *in{i}" for i, v in state]
        lines = ["void *src = NULL;"]
        for i, v in state:
            data = np.asarray(graph.initial_state[v.name], v.dtype)
            cid = self._const_data(data, f"initial value of '{v.name}'")
            lines.append(f"LC_CHECK(cudaGetSymbolAddress(&src, {cid}_data));")
            lines.append(f"LC_CHECK(cudaMemcpyAsync(in{i}, src, {data.nbytes}, "
                         f"cudaMemcpyDeviceToDevice, stream));   /* '{c_comment(v.name)}' */")
        return {"signature": wrap_args(f"cudaError_t {self.prefix}_{name}_init(",
                                   [*args, "cudaStream_t stream"]), "lines": lines,
                "doc": "pass the same device pointers as in" + ", in".join(
                    str(i) for i, _ in state)}

    def library(self) -> str:
        """The GEMM and reduction library (templates/cuda/gemm.cu.j2, reduce.cu.j2)."""
        t = self.tiles
        gemm = render("cuda/gemm.cu.j2", self.bytecode, bm=t["bm"], bn=t["bn"], bk=t["bk"],
                      tm=t["tm"], tn=t["tn"], min_blocks=t["min_blocks"])
        red = render("cuda/reduce.cu.j2", self.bytecode, reduce_threads=t["reduce_threads"])
        text = gemm.rstrip("\n") + "\n\n" + red.rstrip("\n")
        if self.precision != "fp32":   # the tensor-core GEMMs (templates/cuda/gemm_mma.cu.j2)
            text += "\n\n" + render("cuda/gemm_mma.cu.j2", self.bytecode, **self.mma).strip("\n")
        return text

    def files(self) -> dict[str, str]:
        kernels = {s.kernel for e in self.entries for s in e.steps}
        common = {"version": __version__, "prefix": self.prefix, "file": "model.cu",
                  "header": "model.h", "nvcc_line": shlex.join(nvcc_line(self.arch)),
                  "emu_line": shlex.join(emu_line()),
                  "what": " and ".join(e.text["what"] for e in self.entries),
                  "entries": [e.text for e in self.entries]}
        uses_lib = kernels & {"linear", "matmul", "sgd_gemm", "reduce_sum", "cast_bf16"}
        decls = render("cuda/gemm_mma.cu.j2", self.bytecode, part="decls", **self.mma).strip(
            "\n") if uses_lib and self.precision != "fp32" else ""
        cu = render("cuda/model.cu.j2", self.bytecode, **common, block=self.tiles["block"],
                    library=self.library() if uses_lib else "", mma_decls=decls,
                    max_parts=256, params=list(self.consts.values()), max_n=self.max_n(),
                    max_layout=max(len(e.text["layout"]) for e in self.entries))
        h = render("cuda/model.h.j2", self.bytecode, **common,
                   guard=f"LC_{self.prefix.upper()}_H")
        return {"model.cu": cu, "model.h": h}


#: What ``nvcc -arch`` takes from lincompile: a real or virtual architecture, nothing else
#: (the value reaches a Makefile and a command line).
ARCH = re.compile(r"(sm|compute)_[0-9]{2,3}[af]?")


def check_arch(arch: object) -> str:
    """``arch`` if it names a GPU architecture (``sm_90``, ``sm_90a``, ``compute_80``), else
    a CompileError."""
    if not (isinstance(arch, str) and ARCH.fullmatch(arch)):
        raise CompileError(f"arch must look like 'sm_90' or 'compute_90' (sm_ or compute_, "
                           f"then 2 or 3 digits), got {arch!r}")
    return arch


def write_cuda_sources(graphs: Mapping[str, Graph], outdir: str | Path, prefix: str = "model",
                       arch: str | None = None, init: bool = True,
                       precision: str = "fp32", force: bool = False) -> list[Path]:
    """Write ``model.cu``, ``model.h``, a ``Makefile`` and ``cuda_cpu.h`` (for ``make cpu``;
    it also holds the tensor-core wrappers of the tf32/bf16 products) for ``graphs`` (entry
    name -> graph), like :func:`lincompile.backends.c.write_c_sources`: a training graph's
    trainable parameters become inputs of the other graphs, and files lincompile did not
    write are replaced only with ``force``. ``precision`` is that of the Linear products (see
    :func:`compile`)."""
    arch = check_arch(arch or source_arch(precision))
    files = _CudaSource(share_trained(graphs), prefix, arch, GPU_TILES, init,
                        precision).files()
    files["Makefile"] = render(
        "cuda/Makefile.j2", None, version=__version__, file="model.cu", header="model.h",
        lib="libmodel.so", cpu_lib="libmodel_cpu.so", arch=arch,
        nvccflags=" ".join(NVCC_FLAGS), emuflags=" ".join(EMU_FLAGS[:2]))
    files["cuda_cpu.h"] = emulator_header()
    return write_files(files, outdir, force)


def emulator_header() -> str:
    """templates/cuda/cuda_cpu.h, which every emulated build includes."""
    return (templates_dir() / "cuda" / "cuda_cpu.h").read_text()


# ------------------------------------------------------------------------ executables
class _CudaExecutable(Executable):
    """Shared by both targets: the loaded library, its entry point, the workspace size.

    Thread safety: ``run`` may be called from several threads at once (each thread has
    workspaces of its own)."""

    precision = "fp32"   #: of the Linear products (set by compile)

    def __init__(self, graph: Graph, lib_path: Path, entry: Entry, prefix: str):
        super().__init__(graph)
        self.path, self.entry, self.plan = lib_path, entry, entry.plan
        self.entry_name = f"{prefix}_{entry.name}"
        self.lib = load_library(lib_path)
        self._fn = getattr(self.lib, self.entry_name)
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_long] + [ctypes.c_void_p] * (
            len(graph.inputs) + len(graph.outputs) + 2)
        self._ws_size = self.lib[f"{prefix}_workspace_size"]
        self._ws_size.restype, self._ws_size.argtypes = ctypes.c_size_t, [ctypes.c_long]
        self._what = f"graph '{graph.name}' on target {self.target}"
        self._limit = BatchLimit(cuda_limits(entry.steps), self.target)

    def workspace_size(self, n: int) -> int:
        """Bytes of workspace the entry point needs at batch ``n`` (a FeedError when that
        passes 2^62)."""
        check_batch(n, self.entry.max_n, self._what)
        return int(self._ws_size(n))

    def source(self) -> str:
        """The generated CUDA file."""
        return (self.path.parent / "model.cu").read_text()

    def shape(self, v: Value, n: int) -> tuple[int, ...]:
        return tuple(n if isinstance(d, str) else d for d in v.shape)

    def _call(self, n: int, ptrs: list[int], ws: int, stream: int, errors) -> None:
        code = self._fn(n, *ptrs, ws, stream)
        if code != 0:
            raise CudaError(f"{self.entry_name} (graph '{self.graph.name}') failed: "
                            f"{errors(code)}")


class CudaCpuExecutable(_CudaExecutable):
    """The generated CUDA run on the CPU by the emulator (``target="cuda-cpu"``): device
    pointers are host pointers, so numpy arrays are passed as they are. Calls from
    different threads run concurrently: each thread has its own workspace, and the
    emulator keeps all its state (shared memory, fibers, error state) per OS thread."""

    target = "cuda-cpu"

    def __init__(self, *args):
        super().__init__(*args)
        self._ws = Workspaces(self.workspace_size, 256, self._what)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = self.batch(feeds)
        ws = self._ws.address(n)
        ins = [np.require(feeds[v.name], requirements=["C", "A"]) for v in self.graph.inputs]
        outs = {}
        for v in self.graph.outputs:   # poisoned: an output the code forgets stays NaN
            outs[v.name] = np.full(self.shape(v, n), np.nan if v.dtype != "int64" else np.iinfo(
                np.int64).min, v.dtype)
        self._call(n, [a.ctypes.data for a in ins] + [outs[v.name].ctypes.data
                                                       for v in self.graph.outputs],
                   ws, 0, lambda c: f"{EMU_ERRORS.get(c, 'error')} (cudaError {c})")
        return outs


class CudaExecutable(_CudaExecutable):
    """The generated CUDA run on the GPU (``target="cuda"``).

    ``run(feeds)`` takes numpy arrays (copied to the device and the outputs back), or CUDA
    tensors of torch or cupy (anything with ``__cuda_array_interface__``): those are used in
    place, the outputs are allocated by the same library on the same device, and the work
    is enqueued on that library's current stream without waiting for it.

    Thread safety: ``run`` may be called from several threads at once. Each thread has
    device buffers of its own (workspace, and inputs/outputs of numpy feeds), kept for its
    next call and freed when the thread ends or the executable goes away."""

    target = "cuda"

    def __init__(self, *args):
        super().__init__(*args)
        self._local = threading.local()   # .bufs: this thread's _DeviceBuffers

    def _buffer(self, name: str, nbytes: int) -> int:
        """This thread's device buffer ``name`` of at least ``nbytes``, kept for the next
        run."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = _DeviceBuffers()
        return bufs.get(name, nbytes)

    def run(self, feeds: Mapping[str, Any], poison: bool | None = None) -> dict[str, Any]:
        require_device(self.entry_name)   # (numpy outputs are always poisoned here)
        if not any(hasattr(a, "__cuda_array_interface__") for a in feeds.values()):
            return super().run(feeds)
        n, ptrs, outs, lib = self._device_args(feeds, inplace=False)
        ws = self._buffer("workspace", self.workspace_size(n))
        self._call(n, ptrs, ws, _current_stream(lib), error_string)
        return outs

    def bind(self, feeds: Mapping[str, Any], inplace: bool = True,
             graph: bool = True) -> BoundCuda:
        """Pre-bound device buffers for repeated runs at one batch size: ``feeds`` are torch
        or cupy CUDA tensors, ``bound()`` enqueues one call of the entry point on the
        library's current stream (no allocation, no copy, no synchronization), and
        ``bound.outputs`` holds the results. With ``inplace`` each ``X.next`` output is
        ``X``'s own tensor where the header allows it, so calling ``bound()`` again trains on.
        With ``graph`` (default) the first call runs the step and captures it into a CUDA
        graph; later calls replay the graph: one launch per step instead of one per kernel.
        Write new data into the bound tensors in place; ``graph=False`` launches the kernels
        each time.
        """
        require_device(self.entry_name)
        n, ptrs, outs, lib = self._device_args(feeds, inplace)
        return BoundCuda(self, n, ptrs, outs, lib, graph)

    def _device_args(self, feeds: Mapping[str, Any], inplace: bool):
        """(N, entry pointers, outputs, library) for feeds that include CUDA tensors."""
        rt = cudart()
        device = {k: a for k, a in feeds.items() if hasattr(a, "__cuda_array_interface__")}
        # check names, shapes and dtypes on zero-stride stand-ins: no copy of device data
        stand_in = {}
        for k, a in feeds.items():
            if k in device:
                cai = a.__cuda_array_interface__
                dt = np.dtype(cai["typestr"])
                if cai.get("strides") not in (None, tuple(np.empty(cai["shape"], dt).strides)):
                    raise CudaError(f"feed '{k}' is not a contiguous CUDA array")
                stand_in[k] = np.lib.stride_tricks.as_strided(
                    np.zeros(1, dt), cai["shape"], (0,) * len(cai["shape"]))
            else:
                stand_in[k] = a
        checked = check_feeds(self.graph, stand_in)
        like = next(iter(device.values()))
        lib = type(like).__module__.split(".")[0]
        n = self.batch(checked)
        check_batch(n, self.entry.max_n, self._what)
        ptrs = []
        for v in self.graph.inputs:
            if v.name in device:
                ptrs.append(device[v.name].__cuda_array_interface__["data"][0])
            else:   # a host feed among device ones: copied to a buffer of its own
                a = checked[v.name]
                p = self._buffer("in:" + v.name, a.nbytes)
                check(rt.cudaMemcpy(p, a.ctypes.data, a.nbytes, 1), "cudaMemcpy to device")
                ptrs.append(p)
        alias = dict(self.plan.inplace) if inplace else {}
        outs = {}
        for j, v in enumerate(self.graph.outputs):
            src = self.graph.inputs[alias[j]].name if j in alias else None
            if src in device:
                outs[v.name] = device[src]
            else:
                outs[v.name] = _empty_like_lib(lib, self.shape(v, n), v.dtype, like)
            ptrs.append(outs[v.name].__cuda_array_interface__["data"][0])
        return n, ptrs, outs, lib

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = cudart()
        n = self.batch(feeds)
        ws = self._buffer("workspace", self.workspace_size(n))
        ptrs = []
        for v in self.graph.inputs:
            a = np.require(feeds[v.name], requirements=["C"])
            p = self._buffer("in:" + v.name, a.nbytes)
            check(rt.cudaMemcpy(p, a.ctypes.data, a.nbytes, 1), "cudaMemcpy to device")
            ptrs.append(p)
        outs = {v.name: np.empty(self.shape(v, n), v.dtype) for v in self.graph.outputs}
        for v in self.graph.outputs:   # poisoned (all bits set: NaN, or -1 for int64)
            p = self._buffer("out:" + v.name, outs[v.name].nbytes)
            check(rt.cudaMemset(p, 0xFF, outs[v.name].nbytes), "cudaMemset")
            ptrs.append(p)
        self._call(n, ptrs, ws, 0, error_string)
        check(rt.cudaDeviceSynchronize(), f"{self.entry_name} (running)")
        for j, v in enumerate(self.graph.outputs):
            a = outs[v.name]
            check(rt.cudaMemcpy(a.ctypes.data, ptrs[len(self.graph.inputs) + j], a.nbytes, 2),
                  "cudaMemcpy to host")
        return outs


class _DeviceBuffers:
    """Named device buffers of one thread (name -> (pointer, bytes)), grown on demand and
    freed when this object goes (with its thread, or with its executable)."""

    def __init__(self):
        self.bufs: dict[str, tuple[int, int]] = {}

    def get(self, name: str, nbytes: int) -> int:
        p, size = self.bufs.get(name, (0, 0))
        if size < max(nbytes, 1):
            rt = cudart()
            if p:
                del self.bufs[name]
                check(rt.cudaFree(ctypes.c_void_p(p)), "cudaFree")
            ptr = ctypes.c_void_p()
            check(rt.cudaMalloc(ctypes.byref(ptr), max(nbytes, 256)), f"cudaMalloc({nbytes})")
            p, size = ptr.value, max(nbytes, 256)
            self.bufs[name] = (p, size)
        return p

    def __del__(self):
        try:
            rt = cudart()
            for p, _ in self.bufs.values():
                rt.cudaFree(ctypes.c_void_p(p))
        except Exception:   # interpreter shutdown, no runtime: nothing to free
            pass


#: cudaStreamCaptureModeThreadLocal: calls from other threads are not affected by a capture
CAPTURE_MODE = 1
CUDA_STREAM_NON_BLOCKING = 1


class BoundCuda:
    """Pre-bound device buffers of a :class:`CudaExecutable` (see its ``bind``).

    With ``graph``: the first call runs the entry point on the current stream, then records
    it once more, without running it, on a stream of its own (a capture cannot use the
    legacy default stream) into a CUDA graph, which later calls launch on the current
    stream. The graph holds the bound pointers, so it stays valid for this binding."""

    def __init__(self, exe: CudaExecutable, n: int, ptrs: list[int], outputs: dict,
                 lib: str, graph: bool = True):
        self.exe, self.n, self.outputs, self.lib, self.graph = exe, n, outputs, lib, graph
        self._exec = self._graph = self._stream = None
        self._ws = None
        size = max(exe.workspace_size(n), 256)
        ws = ctypes.c_void_p()
        check(cudart().cudaMalloc(ctypes.byref(ws), size), f"cudaMalloc({size})")
        self._ws = ws.value
        self._args = (n, *ptrs, self._ws)

    @property
    def captured(self) -> bool:
        """True once the step is a CUDA graph (after the first call, with ``graph``)."""
        return self._exec is not None

    def __call__(self) -> None:
        stream = _current_stream(self.lib)
        if self._exec is not None:
            check(cudart().cudaGraphLaunch(self._exec, stream),
                  f"{self.exe.entry_name}: cudaGraphLaunch")
            return
        self._run(stream)
        if self.graph:
            self._capture()

    def _run(self, stream: int | None) -> None:
        code = self.exe._fn(*self._args, stream)
        if code != 0:
            raise CudaError(f"{self.exe.entry_name} failed: {error_string(code)}")

    def _capture(self) -> None:
        rt, what = cudart(), f"{self.exe.entry_name}: capturing the step into a CUDA graph"
        s = ctypes.c_void_p()
        check(rt.cudaStreamCreateWithFlags(ctypes.byref(s), CUDA_STREAM_NON_BLOCKING), what)
        self._stream = s.value
        check(rt.cudaStreamBeginCapture(self._stream, CAPTURE_MODE), what)
        code = self.exe._fn(*self._args, self._stream)
        g = ctypes.c_void_p()
        end = rt.cudaStreamEndCapture(self._stream, ctypes.byref(g))   # always end it
        self._graph = g.value
        hint = " (bind(..., graph=False) runs the step without a graph)"
        if code != 0 or end != 0:
            raise CudaError(f"{what} failed: {error_string(code or end)}{hint}")
        e = ctypes.c_void_p()
        code = rt.cudaGraphInstantiateWithFlags(ctypes.byref(e), self._graph, 0)
        if code != 0:
            raise CudaError(f"{what}: cudaGraphInstantiate failed: {error_string(code)}{hint}")
        self._exec = e.value

    def __del__(self):
        try:
            rt = cudart()
            if self._exec:
                rt.cudaGraphExecDestroy(self._exec)
            if self._graph:
                rt.cudaGraphDestroy(self._graph)
            if self._stream:
                rt.cudaStreamDestroy(self._stream)
            if self._ws:
                rt.cudaFree(ctypes.c_void_p(self._ws))
        except Exception:   # interpreter shutdown, no runtime: nothing to free
            pass


def _empty_like_lib(lib: str, shape: tuple[int, ...], dtype: str, like: Any) -> Any:
    if lib == "torch":
        import torch
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=dtype)
    raise CudaError(f"CUDA arrays of '{lib}' are not supported as feeds (torch or cupy are)")


def _current_stream(lib: str) -> int:
    if lib == "torch":
        import torch
        return int(torch.cuda.current_stream().cuda_stream)
    import cupy
    return int(cupy.cuda.get_current_stream().ptr)


# ------------------------------------------------------------------------ compile
def _emu_library(src: _CudaSource) -> Path:
    """The GEMM/reduction library for the emulation, built once per tile configuration."""
    cmd = [cxx(), *EMU_LIB_FLAGS, "-fPIC", "-c", "-include", "cuda_cpu.h", "-x", "c++",
           "lc_kernels.cu", "-o", "lc_kernels.o"]
    return build({"lc_kernels.cu": src.library() + "\n", "cuda_cpu.h": emulator_header()}, cmd,
                 "lc_kernels.o")


def compile_cpu(graph: Graph, prefix: str = "model",
                tiles: Mapping[str, int] | None = None,
                precision: str = "fp32") -> CudaCpuExecutable:
    """Generate the CUDA code of ``graph`` and build it for the CPU emulator
    (``target="cuda-cpu"``). ``tiles`` defaults to :data:`EMU_TILES`; pass
    :data:`GPU_TILES` to emulate the exact GPU configuration (slower; the tensor-core
    tiles then are :data:`MMA_GPU_TILES` and :data:`WGMMA_GPU_TILES`). The emulation is that of
    an sm_90a build: the large tf32/bf16 products run the wgmma kernels (unless
    ``LINCOMPILE_WGMMA=0``). ``precision``: see :func:`compile`."""
    gpu = tiles is not None and dict(tiles) == GPU_TILES
    wg = (WGMMA_GPU_TILES if gpu else WGMMA_EMU_TILES) if wgmma_enabled() else None
    src = _CudaSource({entry_name(graph): graph}, prefix, WGMMA_ARCH, tiles or EMU_TILES,
                      precision=precision,
                      mma=dict(MMA_GPU_TILES if gpu else MMA_EMU_TILES, wgmma=wg))
    files = src.files()
    files["cuda_cpu.h"] = emulator_header()
    lib = _emu_library(src)
    cmd = [cxx(), *EMU_FLAGS, "-fPIC", "-shared", "-include", "cuda_cpu.h",
           "-DLC_PREBUILT_KERNELS", "-x", "c++", "model.cu", "-x", "none", str(lib),
           "-o", "libmodel.so"]
    exe = CudaCpuExecutable(graph, build(files, cmd, "libmodel.so"), src.entries[0],
                            src.prefix)
    exe.precision = src.precision
    return exe


def compile(graph: Graph, arch: str | None = None, prefix: str = "model",
            precision: str = "fp32") -> CudaExecutable:
    """Generate the CUDA code of ``graph``, build it with nvcc for ``arch`` (default: the
    device's, else ``sm_90``; ``sm_90a`` there for tf32/bf16, see :func:`default_arch`) and
    load it. Without a GPU this still compiles; ``run`` then
    raises a CudaError saying no CUDA device was found.

    ``precision`` of the Linear products (matrix multiplications): ``"fp32"`` (default),
    ``"tf32"`` (tensor cores with tf32 operands, fp32 accumulation and storage, as torch's
    ``allow_tf32``) or ``"bf16"`` (mixed precision as ``torch.autocast(dtype=bfloat16)``:
    the products read bf16 copies of their operands and accumulate in fp32; activations,
    master weights, optimizer state, losses and reductions stay fp32). tf32 and bf16 need
    sm_80 or newer; with ``arch="sm_90a"`` the large products run wgmma + TMA kernels
    (``LINCOMPILE_WGMMA=0`` keeps them on the mma.sync kernels)."""
    arch = check_arch(arch or default_arch(precision))
    src = _CudaSource({entry_name(graph): graph}, prefix, arch, GPU_TILES,
                      precision=precision)
    tool = nvcc()
    header = {"cuda_cpu.h": emulator_header()} if src.precision != "fp32" else {}
    lib = build({"lc_kernels.cu": src.library() + "\n", **header},
                [tool, *NVCC_FLAGS, f"-arch={arch}", "-Xcompiler", "-fPIC", "-c", "lc_kernels.cu",
                 "-o", "lc_kernels.o"], "lc_kernels.o")
    cmd = [tool, *NVCC_FLAGS, f"-arch={arch}", "-Xcompiler", "-fPIC", "-shared",
           "-DLC_PREBUILT_KERNELS", "model.cu", str(lib), "-o", "libmodel.so"]
    exe = CudaExecutable(graph, build({**src.files(), **header}, cmd, "libmodel.so"),
                         src.entries[0], src.prefix)
    exe.precision = src.precision
    return exe
