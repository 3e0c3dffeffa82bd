"""Every executable is safe to call from several Python threads at once.

8 threads run one compiled executable on mixed batch sizes (so workspaces of different sizes
are wanted at the same time); each result must equal the same feeds run serially: bitwise
for the generated code (c, cuda-cpu), within 1e-6 for reference and onnxruntime. The
expected values come from serial runs before any thread starts, so a shared workspace or
shared emulator state (``__shared__`` memory, error state) shows up as a mismatch or a
crash.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import mlp

import lincompile as lc
from lincompile.backends.cuda import gpu_available

#: (target, compile options); "c" also with 2 OpenMP threads inside each call; the GPU
#: target too where there is one
CPU_TARGETS = [("reference", {}), ("onnx", {}), ("c", {}), ("c", {"threads": 2}),
               ("cuda-cpu", {})]
TARGETS = CPU_TARGETS + ([("cuda", {})] if gpu_available() else [])
BATCHES = (1, 7, 64, 130)
THREADS = 8
SECONDS = 0.5       # each thread calls until then (at least MIN_ROUNDS times)
MIN_ROUNDS = 3
EXACT = ("c", "cuda-cpu", "cuda")   # generated code: deterministic, so bitwise equal


def graphs(target: str = "c") -> dict[str, lc.Graph]:
    """A model and its training step: big enough that calls overlap in time on the fast
    targets, small on the emulator (where any overlap shows)."""
    model = mlp((12, 20, 4) if target == "cuda-cpu" else (64, 256, 10), seed=5,
                name="threads")
    return {"forward": model,
            "train": lc.training_graph(model, loss="cross-entropy", optimizer=lc.Adam(0.01))}


def jobs(graph: lc.Graph) -> list[dict]:
    """Feeds at each batch size, two seeds each."""
    return [lc.random_feeds(graph, b, seed) for b in BATCHES for seed in (1, 2)]


def same(target: str, got: dict, want: dict) -> bool:
    if got.keys() != want.keys():
        return False
    for k, w in want.items():
        g = np.asarray(got[k])
        if g.shape != w.shape or g.dtype != w.dtype:
            return False
        if target in EXACT:
            if g.tobytes() != w.tobytes():
                return False
        elif not np.allclose(g, w, rtol=1e-6, atol=1e-6):
            return False
    return True


def hammer(exes: list[lc.Executable], feeds: list[dict], want: list[list[dict]],
           target: str) -> list[str]:
    """THREADS threads, each calling ``exes[t % len(exes)]`` for SECONDS on job after job
    (thread t starts at job 3t, so batch sizes mix); the mismatches and exceptions."""
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        exe = exes[t % len(exes)]
        start.wait()
        deadline = time.monotonic() + SECONDS
        r = 0
        while r < MIN_ROUNDS or time.monotonic() < deadline:
            j = (t * 3 + r) % len(feeds)
            r += 1
            try:
                got = exe.run(feeds[j])
            except Exception as e:   # reported as a failure below
                errors.append(f"thread {t} job {j}: {type(e).__name__}: {e}")
                continue
            if not same(target, got, want[t % len(exes)][j]):
                n = next(iter(feeds[j].values())).shape
                errors.append(f"thread {t} round {r} job {j} (feed shape {n}): wrong result")

    run_threads(work, THREADS)
    return errors


def run_threads(work, n: int) -> None:
    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


@pytest.mark.parametrize("kind", ["forward", "train"])
@pytest.mark.parametrize("target,options", TARGETS,
                         ids=[t + "".join(f"-{k}{v}" for k, v in o.items())
                              for t, o in TARGETS])
def test_one_executable_from_8_threads_equals_serial(target, options, kind):
    graph = graphs(target)[kind]
    exe = lc.compile(graph, target, **options)
    feeds = jobs(graph)
    want = [exe.run(f) for f in feeds]   # serial, before any thread starts
    errors = hammer([exe], feeds, [want], target)
    assert not errors, f"{target} {kind}: {len(errors)} bad calls, e.g. {errors[:3]}"


def test_two_cuda_cpu_executables_of_one_graph_used_concurrently():
    """Both load the same cached library: nothing of one call may leak into the other."""
    graph = graphs("cuda-cpu")["train"]
    a, b = lc.compile(graph, "cuda-cpu"), lc.compile(graph, "cuda-cpu")
    assert a.path == b.path
    feeds = jobs(graph)
    want = [a.run(f) for f in feeds]
    errors = hammer([a, b], feeds, [want, want], "cuda-cpu")
    assert not errors, f"{len(errors)} bad calls, e.g. {errors[:3]}"


def test_bound_c_calls_in_threads_do_not_share_a_workspace():
    """A binding keeps a workspace of its own: bindings used in different threads (and
    ``run`` beside them) never write into each other's scratch memory."""
    graph = graphs()["forward"]
    exe = lc.compile(graph, "c")
    feeds = jobs(graph)
    want = [exe.run(f) for f in feeds]
    bounds = [exe.bind(f) for f in feeds]
    errors: list[str] = []
    start = threading.Barrier(len(bounds))

    def work(j: int) -> None:
        start.wait()
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            bounds[j]()
            if not same("c", bounds[j].outputs, want[j]):
                errors.append(f"binding {j}: wrong result")
            exe.run(feeds[(j + 1) % len(feeds)])

    run_threads(work, len(bounds))
    assert not errors, errors[:3]


# ------------------------------------------------------------------ emulator resources
def map_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_many_cuda_cpu_libraries_keep_few_memory_maps(tmp_path):
    """40 distinct emulated libraries loaded and run in one process (copies of one build:
    each copy is a separate library to the dynamic loader) add a few memory maps each,
    not one per fiber stack (the kernel caps a process's maps: vm.max_map_count)."""
    from lincompile.backends.cuda import CudaCpuExecutable

    graph = graphs("cuda-cpu")["train"]
    exe = lc.compile(graph, "cuda-cpu")
    feeds = lc.random_feeds(graph, 7, 0)
    want = exe.run(feeds)
    base = map_count()
    keep = []
    for i in range(40):
        path = tmp_path / f"lib{i}.so"
        path.write_bytes(exe.path.read_bytes())
        keep.append(CudaCpuExecutable(graph, path, exe.entry, "model"))
        assert same("cuda-cpu", keep[-1].run(feeds), want)
    grown = map_count() - base
    assert grown <= 40 * 16, f"40 emulated libraries added {grown} memory maps"


STACK_SRC = r"""
__device__ void deep(char* out) {
    volatile char buf[48 * 1024];        /* more than the 32 KiB stack below */
    for (int i = 0; i < (int)sizeof buf; ++i) buf[i] = (char)i;
    *out = buf[100];
}
__global__ void greedy(char* out) { if (threadIdx.x == 1) deep(out); }
int main() {
    char c = 0;
    LC_LAUNCH(greedy, dim3(1), dim3(2), 0, (cudaStream_t)0)(&c);
    printf("kernel returned\n");
    return 0;
}
"""


def test_emulated_fiber_stack_overflow_is_reported(tmp_path):
    """Fiber stacks share one mapping: a thread that overflows its stack is caught by the
    canary at its end (or the guard page below the first stack), never run on silently."""
    from lincompile.backends.cuda import emulator_header

    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot build the emulator test program")
    (tmp_path / "cuda_cpu.h").write_text(emulator_header())
    (tmp_path / "stack.cpp").write_text(STACK_SRC)
    subprocess.run(["g++", "-std=c++20", "-O0", "-DLC_EMU_STACK_SIZE=32768", "-include",
                    "cuda_cpu.h", "stack.cpp", "-o", "stack"], cwd=tmp_path, check=True)
    p = subprocess.run([str(tmp_path / "stack")], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "kernel returned" not in p.stdout
    assert "FIBER STACK OVERFLOW" in p.stderr and "greedy" in p.stderr, p.stderr


# ------------------------------------------------------------ threads= and workspace sizes
@pytest.mark.parametrize("bad", [0, -1, 1025, 2**62, 2**63 - 1, True, False, 2.0, "2", None])
def test_threads_outside_1_to_1024_is_a_compile_error(bad, tmp_path):
    from lincompile.backends.c import write_c_sources

    g = mlp((3, 2))
    makers = [lambda: write_c_sources({"forward": g}, tmp_path, threads=bad)]
    if bad is not None:   # lc.compile's default: the cores this process may use
        makers.append(lambda: lc.compile(g, "c", threads=bad))
    for make in makers:
        with pytest.raises(lc.CompileError) as e:
            make()
        assert "threads must be an int from 1 to 1024" in str(e.value)
        assert "\n" not in str(e.value)


def empty_feature_graph() -> lc.Graph:
    """Its only input is [N, 0] and its output a scalar, so a batch of 2^50 costs no memory
    to feed or return, while its hidden layer needs 16 KiB of workspace per row."""
    g = lc.Graph("wide")
    x = g.input("x", ["N", 0])
    h = g.tanh(g.linear(g.reduce_sum(x, axes=[1], keepdims=True), 4096, name="fc"))
    g.output(g.reduce_sum(h), "y")
    return g


@pytest.mark.parametrize("target", ["c", "cuda-cpu"])
def test_workspace_size_never_wraps(target):
    """Python knows the exact largest batch whose workspace fits 2^62 bytes: the generated
    ``*_workspace_size`` returns exactly the planned size there and SIZE_MAX above it, and
    ``run`` refuses a larger batch with a FeedError before anything is allocated."""
    g = empty_feature_graph()
    exe = lc.compile(g, target)
    m = exe.entry.max_n
    per_row = sum(s.coef for s in exe.plan.slots)
    assert per_row >= 4096 * 4
    # the most: within a row (and the bound taken for the C GEMM's pack area) of 2^62
    assert 2**62 - 8 * 2**20 < exe._ws_size(m) + per_row and exe._ws_size(m) <= 2**62
    assert exe._ws_size(m + 1) == exe._ws_size(2**63 - 1) == 2**64 - 1
    for n in (m + 1, 2**60):
        # the workspace bound, or the GEMMs' int dimensions, whichever binds first
        with pytest.raises(lc.FeedError, match="more than 2\\^62 bytes|too large for target"):
            exe.run({"x": np.empty((n, 0), np.float32)})
    feeds = {"x": np.empty((5, 0), np.float32)}
    ref = lc.compile(g, "reference", dtype="float64").run(feeds)["y"]
    assert np.allclose(exe.run(feeds)["y"], ref, rtol=1e-5)


def test_a_batch_whose_workspace_size_would_wrap_is_refused_without_a_crash(tmp_path):
    """A batch N ≤ 2^60 chosen so that the workspace's byte count, computed modulo 2^64 as
    C's size_t does, wraps to a few bytes: code given that workspace would write far beyond
    it (a subprocess, so a crash fails the test instead of killing pytest)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np, lincompile as lc
        from test_threads import empty_feature_graph
        exe = lc.compile(empty_feature_graph(), "c")
        assert all(s.power <= 1 for s in exe.plan.slots)
        row = 64 * sum(s.coef for s in exe.plan.slots if s.power)   # per 64 rows, aligned
        two = (row & -row).bit_length() - 1
        mod = 2 ** (64 - two)
        inv = pow(row >> two, -1, mod)
        n = next(64 * m for m in (r * inv % mod for r in range(1, 10000))
                 if 2**40 <= 64 * m <= 2**60)   # row * n / 64 = 2^two * r  (mod 2^64)
        assert (row * (n // 64)) % 2**64 < 2**30
        try:
            exe.run({{"x": np.empty((n, 0), np.float32)}})
        except lc.FeedError as e:
            print("FeedError", e)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("FeedError"), (p.returncode, p.stderr)


def test_a_tensor_too_large_for_any_workspace_is_a_compile_error():
    g = lc.Graph("huge")
    big = g.input("big", [2**32, 2**32])
    g.output(g.tanh(g.tanh(big)))   # the inner tanh needs a 2^66-byte workspace slot
    for target in ("c", "cuda-cpu"):
        with pytest.raises(lc.CompileError, match="more than 2\\^62"):
            lc.compile(g, target)


@pytest.mark.parametrize("target,precision", [("cuda-cpu", "bf16"), ("cuda-cpu", "tf32"),
                                              ("c", "bf16")])
def test_tensor_core_and_bf16_products_from_8_threads_equal_serial(target, precision):
    """The emulated mma/wgmma/TMA/mbarrier state and the bf16 copies are per call too: a
    training step whose products pass the emulator's wgmma thresholds (64 rows and
    columns, 32 deep) at the larger batches."""
    model = mlp((40, 72, 68), seed=6, name="tc")
    graph = lc.training_graph(model, loss="mse", optimizer=lc.Adam(0.01))
    exe = lc.compile(graph, target, precision=precision)
    feeds = jobs(graph)
    want = [exe.run(f) for f in feeds]
    errors = hammer([exe], feeds, [want], target)
    assert not errors, f"{target} {precision}: {len(errors)} bad calls, e.g. {errors[:3]}"
