"""Every executable is safe to call from several Python threads at once.

8 threads run one compiled executable on mixed batch sizes (so workspaces of different sizes
are wanted at the same time); each result must equal the same feeds run serially: bitwise
for the generated code (c, cuda-cpu), within 1e-6 for reference and onnxruntime. The
expected values come from serial runs before any thread starts, so a shared workspace or
shared emulator state (``__shared__`` memory, error state) shows up as a mismatch or a
crash.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import mlp

import lincompile as lc

#: (target, compile options); "c" also with 2 OpenMP threads inside each call
CPU_TARGETS = [("reference", {}), ("onnx", {}), ("c", {}), ("c", {"threads": 2}),
               ("cuda-cpu", {})]
BATCHES = (1, 7, 64, 130)
THREADS = 8
SECONDS = 0.5       # each thread calls until then (at least MIN_ROUNDS times)
MIN_ROUNDS = 3
EXACT = ("c", "cuda-cpu")


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
@pytest.mark.parametrize("target,options", CPU_TARGETS,
                         ids=[t + "".join(f"-{k}{v}" for k, v in o.items())
                              for t, o in CPU_TARGETS])
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
