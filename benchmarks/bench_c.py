"""C backend benchmarks (issue 4 §4): single-threaded float32, one process, one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_c.py

Prints a ratio table:

- ``Y = X·Wᵀ + b``, ``dX = dY·W`` and ``dW = dYᵀ·X`` at (N, C_in, C_out) = (64, 784, 128),
  (256, 1024, 1024), (1024, 2048, 2048): GFLOP/s of the generated kernels vs numpy
  (OpenBLAS) and vs onnxruntime on the same graph (bar: ≥ 0.9× numpy at the larger two);
- the training step of a 784-128-10 MLP at batch 64 (cross-entropy, SGD): generated C (one
  ctypes call on pre-bound buffers) vs onnxruntime running lincompile's exported training
  graph vs torch eager (bars: ≥ 1.3× faster than onnxruntime, ≥ 1.5× than torch);
- the generated kernels on 2 threads vs 1 at the two larger shapes.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"   # before numpy / torch load their thread pools

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

import lincompile as lc  # noqa: E402
from lincompile.backends.onnx import to_onnx  # noqa: E402

SHAPES = [(64, 784, 128), (256, 1024, 1024), (1024, 2048, 2048)]


def timeit(fn: Callable[[], object], budget: float = 0.6, min_reps: int = 5) -> float:
    """Median seconds per call over ≥ ``min_reps`` calls and about ``budget`` seconds."""
    fn()   # warm up (page faults, lazy init)
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    return float(np.median(times))


def ort_session(graph: lc.Graph):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(to_onnx(graph).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def product_graphs(n: int, cin: int, cout: int) -> dict[str, tuple[lc.Graph, Callable]]:
    """The three Linear products as graphs, with their numpy equivalents."""
    y = lc.Graph("linear")
    y.output(y.apply("linear", [y.input("x", [n, cin]), y.input("w", [cout, cin]),
                                y.input("b", [cout])]), name="y")
    dx = lc.Graph("dx")
    dx.output(dx.matmul(dx.input("dy", [n, cout]), dx.input("w", [cout, cin])), name="dx")
    dw = lc.Graph("dw")
    dw.output(dw.matmul(dw.input("dy", [n, cout]), dw.input("x", [n, cin]), trans_a=True),
              name="dw")

    y_out = np.empty((n, cout), np.float32)
    dx_out = np.empty((n, cin), np.float32)
    dw_out = np.empty((cout, cin), np.float32)

    def np_y(f):
        np.matmul(f["x"], f["w"].T, out=y_out)
        np.add(y_out, f["b"], out=y_out)

    return {"Y = X·Wᵀ + b": (y, np_y),
            "dX = dY·W": (dx, lambda f: np.matmul(f["dy"], f["w"], out=dx_out)),
            "dW = dYᵀ·X": (dw, lambda f: np.matmul(f["dy"].T, f["x"], out=dw_out))}


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, budget: float = 0.6
                ) -> dict[str, float]:
    """Median over ``repeat`` rounds of each function's median time; the rounds alternate
    the functions, so a burst of load on the machine hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            times[k].append(timeit(fn, budget))
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_products(threads2: bool, repeat: int = 1) -> list[list[str]]:
    rows = []
    for n, cin, cout in SHAPES:
        flops = 2 * n * cin * cout
        for name, (g, np_fn) in product_graphs(n, cin, cout).items():
            feeds = lc.random_feeds(g, seed=1)
            c1 = lc.compile(g, "c").bind(feeds)
            sess = ort_session(g)
            fns = {"c": c1, "np": lambda: np_fn(feeds), "ort": lambda: sess.run(None, feeds)}
            if threads2 and n >= 256:
                fns["c2"] = lc.compile(g, "c", threads=2).bind(feeds)
            t = interleaved(fns, repeat)
            t_c, t_np, t_ort = t["c"], t["np"], t["ort"]
            row = [name, f"{n}×{cin}×{cout}", f"{flops / t_c / 1e9:.1f}",
                   f"{flops / t_np / 1e9:.1f}", f"{flops / t_ort / 1e9:.1f}",
                   f"{t_np / t_c:.2f}", f"{t_ort / t_c:.2f}"]
            if threads2:
                row.append(f"{t_c / t['c2']:.2f}" if "c2" in t else "")
            rows.append(row)
            print("  ".join(row), file=sys.stderr, flush=True)
    return rows


def bench_train_step(batch: int = 64, repeat: int = 1) -> list[list[str]]:
    g = lc.Graph("mlp", seed=0)
    x = g.input("x", ["N", 784])
    g.output(g.linear(g.relu(g.linear(x, 128, name="fc1")), 10, name="fc2"))
    t = lc.training_graph(g, loss="cross-entropy", optimizer=lc.SGD(0.01))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((batch, 784)).astype(np.float32),
             "target": rng.integers(0, 10, batch).astype(np.int64),
             "lr": np.array(0.01, np.float32), **t.initial_state}
    exe = lc.compile(t, "c")
    bound = exe.bind(feeds)
    sess = ort_session(t)
    fns = {"lincompile C (bound: one ctypes call)": bound,
           "lincompile C (Executable.run)": lambda: exe.run(feeds),
           "onnxruntime (exported training graph)": lambda: sess.run(None, feeds)}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
        model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        crit = torch.nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["target"])

        def step():
            opt.zero_grad()
            crit(model(tx), ty).backward()
            opt.step()
        fns[f"torch {torch.__version__} eager"] = step
    res = interleaved(fns, repeat, 1.0)
    base = res["lincompile C (bound: one ctypes call)"]
    rows = [[k, f"{v * 1e6:.0f}", f"{v / base:.2f}"] for k, v in res.items()]
    for r in rows:
        print("  ".join(r), file=sys.stderr, flush=True)
    return rows


def table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"
    return "\n".join([fmt(head), "|" + "|".join("-" * (x + 2) for x in w) + "|",
                      *map(fmt, rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-threads", action="store_true", help="skip the 2-thread column")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="alternate the implementations over R rounds and report the median "
                        "(use 3+ on a machine with other load)")
    a = p.parse_args()
    import onnxruntime

    print(f"# lincompile C backend benchmark — {time.strftime('%Y-%m-%d')}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; single thread unless noted\n")
    head = ["product", "N×C_in×C_out", "C GFLOP/s", "numpy", "onnxruntime", "C / numpy",
            "C / ort"] + ([] if a.no_threads else ["2 threads / 1"])
    print(table(head, bench_products(not a.no_threads, a.repeat)))
    print("\nMLP 784-128-10 training step, batch 64, cross-entropy + SGD:\n")
    print(table(["implementation", "µs / step", "time vs C"],
                bench_train_step(repeat=a.repeat)))


if __name__ == "__main__":
    main()
