"""Helpers of tests/test_c_backend.py: graphs, and a standalone C driver for sanitizer runs.

The driver is plain C that includes the generated header, reads each input from a file
into a buffer of exactly its size (so AddressSanitizer sees any overrun), calls the entry
point, and writes the outputs back. Python compares them with the float64 reference.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

import lincompile as lc

CTYPE = {"float32": "float", "float64": "double", "int64": "int64_t"}

DRIVER = r"""
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

static void *load(FILE *f, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "short read\n"); exit(2); }
    return p;
}

/* usage: driver N INPUTS OUTPUTS INPLACE */
int main(int argc, char **argv)
{
    if (argc != 5) return 2;
    long N = atol(argv[1]);
    size_t bn = (size_t)N;
    int inplace = atoi(argv[4]);
    FILE *fi = fopen(argv[2], "rb"), *fo = fopen(argv[3], "wb");
    if (!fi || !fo) return 2;
    (void)bn;
%(body)s
    fclose(fi);
    fclose(fo);
    return 0;
}
"""


def _bytes(v: lc.Value) -> str:
    expr = [str(d) if isinstance(d, int) else "bn" for d in v.shape]
    return " * ".join([str(np.dtype(v.dtype).itemsize), *expr])


def driver_source(graph: lc.Graph, entry: str, inplace: list[tuple[int, int]],
                  prefix: str = "model") -> str:
    alias = dict(inplace)
    lines = []
    for i, v in enumerate(graph.inputs):
        lines.append(f"    {CTYPE[v.dtype]} *in{i} = load(fi, {_bytes(v)});")
    for j, v in enumerate(graph.outputs):
        own = f"malloc({_bytes(v)} ? {_bytes(v)} : 1)"
        if j in alias:
            own = f"inplace ? in{alias[j]} : {own}"
        lines.append(f"    {CTYPE[v.dtype]} *out{j} = {own};")
    lines.append("    void *ws = NULL;")
    lines.append(f"    if (posix_memalign(&ws, 64, {prefix}_workspace_size(N) + 1)) return 3;")
    args = ", ".join(["N", *(f"in{i}" for i in range(len(graph.inputs))),
                      *(f"out{j}" for j in range(len(graph.outputs))), "ws"])
    lines.append(f"    {prefix}_{entry}({args});")
    for j, v in enumerate(graph.outputs):
        lines.append(f"    fwrite(out{j}, 1, {_bytes(v)}, fo);")
    for j in range(len(graph.outputs)):
        cond = f"!(inplace && {j in alias:d})"
        lines.append(f"    if ({cond}) free(out{j});")
    lines += [f"    free(in{i});" for i in range(len(graph.inputs))]
    lines.append("    free(ws);")
    return DRIVER % {"body": "\n".join(lines)}


def build_driver(graph: lc.Graph, outdir: Path, flags: list[str]) -> tuple[Path, str, list]:
    """Write the sources of ``graph`` and the driver into ``outdir`` and build them."""
    from lincompile.backends.c import _Source, entry_name, write_c_sources

    entry = entry_name(graph)
    write_c_sources({entry: graph}, outdir)
    inplace = _Source({entry: graph}, "model", [], 1).entries[0].plan.inplace
    (outdir / "driver.c").write_text(driver_source(graph, entry, inplace))
    exe = outdir / "driver"
    cmd = ["cc", *flags, "driver.c", "model.c", "-o", str(exe), "-lm"]
    subprocess.run(cmd, cwd=outdir, check=True, capture_output=True, text=True)
    return exe, entry, inplace


def run_driver(exe: Path, graph: lc.Graph, feeds: dict, inplace: bool, tmp: Path,
               env: dict | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    n = next((a.shape[i] for v in graph.inputs for i, d in enumerate(v.shape)
              if isinstance(d, str) for a in [feeds[v.name]]), 0)
    fin, fout = tmp / "in.bin", tmp / "out.bin"
    fin.write_bytes(b"".join(np.ascontiguousarray(feeds[v.name]).tobytes()
                             for v in graph.inputs))
    res = subprocess.run([str(exe), str(n), str(fin), str(fout), str(int(inplace))],
                         capture_output=True, text=True, env=env, timeout=120)
    outs = {}
    if res.returncode == 0:
        raw, at = fout.read_bytes(), 0
        for v in graph.outputs:
            shape = tuple(n if isinstance(d, str) else d for d in v.shape)
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(v.dtype).itemsize
            outs[v.name] = np.frombuffer(raw[at:at + size], v.dtype).reshape(shape)
            at += size
    return outs, res


def _ptr(a: np.ndarray):
    import ctypes

    return a.ctypes.data_as(ctypes.c_void_p)


def ctypes_call(lib, entry: str, graph: lc.Graph, feeds: dict, prefix: str = "model") -> dict:
    """Call entry point ``prefix_entry`` of a built library as a C caller would: the batch
    size, one pointer per input and output in the header's order, and a workspace of
    ``prefix_workspace_size(N)`` bytes. Outputs start poisoned (NaN, or -1 for integers),
    so one the code does not write fails the comparison with the reference."""
    import ctypes

    n = next((np.shape(feeds[v.name])[i] for v in graph.inputs
              for i, d in enumerate(v.shape) if isinstance(d, str)), 0)
    ins = [np.ascontiguousarray(feeds[v.name], v.dtype) for v in graph.inputs]
    outs = {v.name: np.full([n if isinstance(d, str) else d for d in v.shape],
                            np.nan if v.dtype != "int64" else -1, v.dtype)
            for v in graph.outputs}
    size = getattr(lib, f"{prefix}_workspace_size")
    size.restype, size.argtypes = ctypes.c_size_t, [ctypes.c_long]
    ws = np.zeros(size(n) + 64, np.uint8)
    fn = getattr(lib, f"{prefix}_{entry}")
    fn.restype = None
    fn(ctypes.c_long(n), *map(_ptr, ins), *map(_ptr, outs.values()), _ptr(ws))
    return outs


def ctypes_initial_state(lib, entry: str, graph: lc.Graph, prefix: str = "model") -> dict:
    """The state inputs of a training step as ``prefix_entry_init`` fills them (each array
    starts poisoned)."""
    state = {v.name: np.full([d for d in v.shape], np.nan if v.dtype != "int64" else -1,
                             v.dtype) for v in graph.inputs if v.name in graph.initial_state}
    fn = getattr(lib, f"{prefix}_{entry}_init")
    fn.restype = None
    fn(*map(_ptr, state.values()))
    return state


def train_with_library(lib, entry: str, graph: lc.Graph, batches: list[dict], prefix="model"):
    """Train with the library's training step from its own initial state, next to the float64
    reference from the graph's initial state; returns per-step (ours, reference) outputs."""
    from lincompile.backends.reference import ReferenceExecutable

    ref = ReferenceExecutable(graph, "float64")
    state = ctypes_initial_state(lib, entry, graph, prefix)
    for k, v in graph.initial_state.items():
        assert np.array_equal(state[k], v), f"{prefix}_{entry}_init: {k}"
    ref_state = dict(graph.initial_state)
    steps = []
    for feeds in batches:
        got = ctypes_call(lib, entry, graph, {**feeds, **state}, prefix)
        want = ref.run({**feeds, **ref_state})
        steps.append((got, want))
        state = {k: got[f"{k}.next"] for k in state}
        ref_state = {k: want[f"{k}.next"] for k in ref_state}
    return steps
