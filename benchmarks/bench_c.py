"""C backend benchmarks: the generated GEMMs and an MLP training step against numpy
(OpenBLAS), onnxruntime and torch, on one thread and on all threads, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_c.py --repeat 5

Prints:

- the host's fp32 FMA peak per core (``benchmarks/peak.c``, built with the same ``-march``
  as the generated code);
- ``Y = X·Wᵀ + b``, ``dX = dY·W`` and ``dW = dYᵀ·X`` at (N, C_in, C_out) = (64, 784, 128),
  (256, 1024, 1024), (1024, 2048, 2048): GFLOP/s of the generated kernels, % of the peak
  (the FMA loop of peak.c timed in the same interleaved rounds, the median of both, on as
  many threads as the row), numpy, onnxruntime and torch, and the ratio to the best of
  the three (bars: ≥ 0.95× the best library everywhere, ≥ 80 % of peak at the two larger
  shapes); then the same on all the cores this process may use (``os.sched_getaffinity``);
- the training step of a 784-128-10 MLP at batch 64 (cross-entropy, SGD) through
  ``Executable.run``, through ``bind()`` (in place, and not), onnxruntime running
  lincompile's exported training graph and torch eager, on one thread and on all, in 5·R
  interleaved rounds of 0.2 s (bars: run() within 10 µs of bind(), ≥ 1.3× faster than
  onnxruntime at the same thread count).
  run() is fed the arrays as numpy made them and writes fresh outputs; bind() in place
  writes each ``X.next`` over ``X`` in buffers of its own on 64-byte lines, so
  ``run() − bind(inplace=False)`` is what run() costs per call beyond the same memory
  traffic (Python, and the feeds' placement).

``--shapes 64x784x128,...`` measures other product shapes; ``--no-step`` and
``--no-products`` leave out one part.

``--precision bf16`` prints, instead, the three products in bf16 (operands rounded to
bfloat16, float32 sums: ``lc.compile(..., precision="bf16")``, on AMX-BF16 or AVX512-BF16
where the host has them) next to the fp32 C kernels, torch's bf16 matmul on bf16 tensors
(oneDNN; no conversion) and torch.autocast's bf16 on the float32 tensors (conversion
included, as in lincompile), and the kernel the bf16 products ran on; then relu MLP training
steps (784-128-10 at batch 64, 1024-4096-4096-1024 at batch 512) in fp32 and bf16 through
``bind()`` next to torch eager in fp32 and under autocast bf16, on one thread.

``--clock cpu`` times one-thread calls by the calling thread's CPU time instead of the wall
clock (every library here runs a one-thread call on the calling thread), which keeps
other processes' load out of the numbers on a shared machine; multi-thread calls are
always timed by the wall clock. ``--avx2`` builds the generated code for
``-march=x86-64-v3`` and limits numpy (``OPENBLAS_CORETYPE=Haswell``) and torch
(``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``) to AVX2 as well: the
numbers of an AVX2-only host on this one (onnxruntime picks its own kernels).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SHAPES = [(64, 784, 128), (256, 1024, 1024), (1024, 2048, 2048)]
AVX2_ENV = {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "ONEDNN_MAX_CPU_ISA": "AVX2"}
HERE = Path(__file__).resolve().parent


def shapes(text: str) -> list[tuple[int, int, int]]:
    """``--shapes``: comma-separated ``NxC_INxC_OUT`` triples."""
    try:
        out = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        out = []
    if not out or any(len(s) != 3 or min(s) < 1 for s in out):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NxC_INxC_OUT[,...], "
                                         "e.g. 64x784x128")
    return out


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------- timing
class Timer:
    """Median seconds per call over at least ``min_reps`` calls and about ``budget``
    seconds, after two warm-up calls; ``cpu``: the calling thread's CPU time."""

    def __init__(self, cpu: bool, budget: float = 0.4, min_reps: int = 5):
        self.cpu, self.budget, self.min_reps = cpu, budget, min_reps

    def __call__(self, fn: Callable[[], object], threads: int = 1) -> float:
        import numpy as np

        clock = time.thread_time if self.cpu and threads == 1 else time.perf_counter
        fn()
        fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < self.min_reps or time.perf_counter() - start < self.budget:
            t0 = clock()
            fn()
            times.append(clock() - t0)
            if len(times) >= 5000:
                break
        return float(np.median(times))


def interleaved(fns: dict[str, tuple[Callable[[], object], int]], repeat: int,
                timer: Timer) -> dict[str, float]:
    """Median over ``repeat`` rounds of each function's median; the rounds alternate the
    functions, so a burst of load on the machine hits all of them alike."""
    import numpy as np

    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, (fn, threads) in fns.items():
            times[k].append(timer(fn, threads))
    return {k: float(np.median(v)) for k, v in times.items()}


# ------------------------------------------------------------------------------- peak
def peak(march: list[str], threads: int = 1, seconds: float = 0.3) -> float:
    """The fp32 FMA peak (GFLOP/s) of ``threads`` cores: benchmarks/peak.c, built with
    ``march``, run as that many processes at once (their sum)."""
    exe = Path(tempfile.mkdtemp(prefix="lc-peak-")) / "peak"
    subprocess.run(["cc", "-O2", *march, "-o", str(exe), str(HERE / "peak.c")], check=True)
    procs = [subprocess.Popen([str(exe), str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(threads)]
    return sum(float(p.communicate()[0].split()[0]) for p in procs)


class PeakProbe:
    """benchmarks/peak.c as a library: ``call(threads)`` is a function that runs the FMA
    loop on ``threads`` threads at once (about 10 ms each), to be timed in the same
    interleaved rounds as the products, so each row's % of peak compares two medians taken
    at the same time (the host's speed drifts over a run)."""

    def __init__(self, march: list[str]):
        import ctypes

        so = Path(tempfile.mkdtemp(prefix="lc-peak-")) / "peak.so"
        subprocess.run(["cc", "-O2", *march, "-shared", "-fPIC", "-o", str(so),
                        str(HERE / "peak.c")], check=True)
        lib = ctypes.CDLL(str(so))
        lib.peak_run.argtypes, lib.peak_run.restype = [ctypes.c_long, ctypes.c_float], \
            ctypes.c_float
        self._run, per_iter = lib.peak_run, lib.peak_flops_per_iter()
        self._run(1 << 16, 0.5)   # warm up (clock ramp)
        t0 = time.perf_counter()
        self._run(1 << 16, 0.5)
        self.iters = max(1, int((1 << 16) * 1e-2 / max(time.perf_counter() - t0, 1e-9)))
        self.flops_per_call = per_iter * self.iters
        self._pools: dict[int, object] = {}

    def call(self, threads: int) -> Callable[[], object]:
        if threads == 1:
            return lambda: self._run(self.iters, 0.5)
        from concurrent.futures import ThreadPoolExecutor  # ctypes releases the GIL

        pool = self._pools.setdefault(threads, ThreadPoolExecutor(threads))
        return lambda: [f.result() for f in [pool.submit(self._run, self.iters, 0.5)
                                             for _ in range(threads)]]


# ------------------------------------------------------------------------------- products
def product_graphs(n: int, cin: int, cout: int):
    """The three Linear products as graphs, with numpy and torch equivalents."""
    import numpy as np

    import lincompile as lc

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

    def torch_fns(f):
        import torch

        t = {k: torch.from_numpy(v) for k, v in f.items()}
        ty, tdx, tdw = (torch.from_numpy(a) for a in (y_out, dx_out, dw_out))
        return {"y": lambda: torch.addmm(t["b"], t["x"], t["w"].T, out=ty),
                "dx": lambda: torch.mm(t["dy"], t["w"], out=tdx),
                "dw": lambda: torch.mm(t["dy"].T, t["x"], out=tdw)}

    return [("Y = X·Wᵀ + b", y, np_y, "y"),
            ("dX = dY·W", dx, lambda f: np.matmul(f["dy"], f["w"], out=dx_out), "dx"),
            ("dW = dYᵀ·X", dw, lambda f: np.matmul(f["dy"].T, f["x"], out=dw_out), "dw"),
            ], torch_fns


def ort_session(graph, threads: int):
    import onnxruntime as ort

    from lincompile.backends.onnx import to_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(to_onnx(graph).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def numpy_threads(n: int):
    """A context limiting numpy's BLAS to ``n`` threads (None without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(n)


def bench_products(a, threads: int, probe: PeakProbe) -> list[list[str]]:
    import lincompile as lc

    torch = _torch(threads)
    rows = []
    for n, cin, cout in a.shapes:
        flops = 2 * n * cin * cout
        graphs, torch_fns = product_graphs(n, cin, cout)
        for name, g, np_fn, key in graphs:
            feeds = lc.random_feeds(g, seed=1)
            exe = lc.compile(g, "c", threads=threads, cflags=a.cflags)
            fns = {"c": (exe.bind(feeds), threads)}
            limit = numpy_threads(threads) if threads > 1 else None
            if threads == 1 or limit is not None:
                fns["numpy"] = (lambda f=feeds, fn=np_fn: fn(f), threads)
            sess = ort_session(g, threads)
            fns["onnxruntime"] = (lambda s=sess, f=feeds: s.run(None, f), threads)
            if torch is not None:
                fns["torch"] = (torch_fns(feeds)[key], threads)
            fns["peak"] = (probe.call(threads), threads)
            t = interleaved(fns, a.repeat, a.timer)
            if limit is not None:
                limit.restore_original_limits()
            gf = {k: flops / v / 1e9 for k, v in t.items()}
            gf["peak"] = probe.flops_per_call * threads / t["peak"] / 1e9
            # with --avx2, onnxruntime keeps its own (wider) kernels: not a fair "best"
            best = max(v for k, v in gf.items() if k not in ("c", "peak") and not (
                a.avx2 and k == "onnxruntime"))
            row = [name, f"{n}×{cin}×{cout}", f"{gf['c']:.1f}",
                   f"{100 * gf['c'] / gf['peak']:.0f} %", f"{gf['peak']:.1f}"]
            row += [f"{gf[k]:.1f}" if k in gf else "–" for k in ("numpy", "onnxruntime",
                                                                 "torch")]
            row.append(f"{gf['c'] / best:.2f}")
            rows.append(row)
            print("  ".join(row), file=sys.stderr, flush=True)
    return rows


def bench_bf16_products(a, threads: int) -> list[list[str]]:
    """The three products in bf16 (C) against fp32 C, torch bf16 and torch autocast."""
    import lincompile as lc

    torch = _torch(threads)
    rows = []
    for n, cin, cout in a.shapes:
        flops = 2 * n * cin * cout
        graphs, _ = product_graphs(n, cin, cout)
        for name, g, _, key in graphs:
            feeds = lc.random_feeds(g, seed=1)
            bf = lc.compile(g, "c", threads=threads, cflags=a.cflags, precision="bf16")
            fp = lc.compile(g, "c", threads=threads, cflags=a.cflags)
            fns = {"bf16": (bf.bind(feeds), threads), "fp32": (fp.bind(feeds), threads)}
            if torch is not None:
                fns.update({k: (f, threads) for k, f in _torch_bf16(torch, feeds, key).items()})
            t = interleaved(fns, a.repeat, a.timer)
            gf = {k: flops / v / 1e9 for k, v in t.items()}
            row = [name, f"{n}×{cin}×{cout}", f"{gf['bf16']:.0f}", f"{gf['fp32']:.0f}",
                   f"{gf['bf16'] / gf['fp32']:.2f}"]
            row += [f"{gf[k]:.0f}" if k in gf else "–" for k in ("torch bf16", "autocast")]
            row += [f"{gf['bf16'] / gf['torch bf16']:.2f}" if "torch bf16" in gf else "–",
                    bf.bf16_kernel or "–"]
            rows.append(row)
            print("  ".join(row), file=sys.stderr, flush=True)
    return rows


#: the MLP training steps of the bf16 table: layer sizes, batch
BF16_STEPS = [((784, 128, 10), 64), ((1024, 4096, 4096, 1024), 512)]


def bench_bf16_steps(a) -> list[list[str]]:
    """One thread: the relu MLP steps of :data:`BF16_STEPS` (cross-entropy, SGD) through
    ``bind()`` in fp32 and bf16, and torch eager in fp32 and under autocast bf16 (ms)."""
    import numpy as np

    import lincompile as lc

    torch = _torch(1)
    rows = []
    for sizes, batch in BF16_STEPS:
        g = lc.Graph("mlp", seed=0)
        h = g.input("x", ["N", sizes[0]])
        for i, n in enumerate(sizes[1:], 1):
            h = g.linear(h, n, name=f"fc{i}")
            h = g.relu(h) if i < len(sizes) - 1 else h
        g.output(h)
        t = lc.training_graph(g, loss="cross-entropy", optimizer=lc.SGD(0.01))
        rng = np.random.default_rng(0)
        feeds = {"x": rng.standard_normal((batch, sizes[0])).astype(np.float32),
                 "target": rng.integers(0, sizes[-1], batch).astype(np.int64),
                 "lr": np.array(0.01, np.float32), **t.initial_state}
        fns = {p: (lc.compile(t, "c", threads=1, cflags=a.cflags, precision=p).bind(feeds), 1)
               for p in ("fp32", "bf16")}
        if torch is not None:
            fns.update({k: (f, 1) for k, f in _torch_steps(torch, sizes, feeds).items()})
        res = interleaved(fns, a.repeat, Timer(a.timer.cpu, budget=1.0))
        ms = lambda k: f"{res[k] * 1e3:.3f}" if k in res else "–"
        rows.append(["-".join(map(str, sizes)), str(batch), ms("fp32"), ms("bf16"),
                     f"{res['fp32'] / res['bf16']:.2f}", ms("torch fp32"), ms("autocast")])
        print("  ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _torch_steps(torch, sizes, feeds: dict) -> dict[str, Callable[[], object]]:
    """torch eager training steps of the same MLP, in fp32 and under autocast bf16."""
    layers: list = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    crit = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["target"])

    def step(autocast: bool):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        crit(out.float(), y).backward()
        opt.step()
    return {"torch fp32": lambda: step(False), "autocast": lambda: step(True)}


def _torch_bf16(torch, feeds: dict, key: str) -> dict[str, Callable[[], object]]:
    """torch's bf16 product ``key`` on bf16 copies of ``feeds`` (outputs preallocated), and
    torch.autocast's on the float32 feeds."""
    f = {k: torch.from_numpy(v) for k, v in feeds.items()}
    h = {k: v.bfloat16() for k, v in f.items()}
    auto = torch.autocast("cpu", dtype=torch.bfloat16)
    lin = torch.nn.functional.linear
    if key == "y":
        out = torch.empty(h["x"].shape[0], h["w"].shape[0], dtype=torch.bfloat16)
        bf = lambda: torch.addmm(h["b"], h["x"], h["w"].T, out=out)
        ac = lambda: lin(f["x"], f["w"], f["b"])
    elif key == "dx":
        out = torch.empty(h["dy"].shape[0], h["w"].shape[1], dtype=torch.bfloat16)
        bf = lambda: torch.mm(h["dy"], h["w"], out=out)
        ac = lambda: torch.mm(f["dy"], f["w"])
    else:
        out = torch.empty(h["dy"].shape[1], h["x"].shape[1], dtype=torch.bfloat16)
        bf = lambda: torch.mm(h["dy"].T, h["x"], out=out)
        ac = lambda: torch.mm(f["dy"].T, f["x"])

    def autocast():
        with auto:
            return ac()
    return {"torch bf16": bf, "autocast": autocast}


def _torch(threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


# ------------------------------------------------------------------------------- MLP step
def bench_train_step(a, threads: int, batch: int = 64) -> dict[str, float]:
    import numpy as np

    import lincompile as lc

    g = lc.Graph("mlp", seed=0)
    x = g.input("x", ["N", 784])
    g.output(g.linear(g.relu(g.linear(x, 128, name="fc1")), 10, name="fc2"))
    t = lc.training_graph(g, loss="cross-entropy", optimizer=lc.SGD(0.01))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((batch, 784)).astype(np.float32),
             "target": rng.integers(0, 10, batch).astype(np.int64),
             "lr": np.array(0.01, np.float32), **t.initial_state}
    exe = lc.compile(t, "c", threads=threads, cflags=a.cflags)
    sess = ort_session(t, threads)
    fns = {"C run()": (lambda: exe.run(feeds), threads),
           "C bind() (in place)": (exe.bind(feeds), threads),
           "C bind(inplace=False)": (exe.bind(feeds, inplace=False), threads),
           "onnxruntime (exported graph)": (lambda: sess.run(None, feeds), threads)}
    torch = _torch(threads)
    if torch is not None:
        model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        crit = torch.nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["target"])

        def step():
            opt.zero_grad()
            crit(model(tx), ty).backward()
            opt.step()
        fns[f"torch {torch.__version__} eager"] = (step, threads)
    # R rounds of 1 s each would let the host's drift between blocks into the ratios:
    # 5R rounds of 0.2 s, the same time in all
    res = interleaved(fns, 5 * a.repeat, Timer(a.timer.cpu, budget=0.2))
    for k, v in res.items():
        print(f"{k}: {v * 1e6:.0f} µs ({threads} threads)", file=sys.stderr, flush=True)
    return res


def print_train_step(a) -> None:
    print("\nMLP 784-128-10 training step, batch 64, cross-entropy + SGD (µs per step):\n")
    counts = [1] + ([a.threads] if a.threads > 1 else [])
    res = {n: bench_train_step(a, n) for n in counts}
    rows = [[k] + [f"{res[n][k] * 1e6:.0f}" for n in counts] for k in res[1]]
    run, ort = "C run()", "onnxruntime (exported graph)"
    for bound in ("C bind() (in place)", "C bind(inplace=False)"):
        rows.append([f"run() − {bound[2:]}"] + [f"{(res[n][run] - res[n][bound]) * 1e6:.0f}"
                                               for n in counts])
    rows.append(["onnxruntime / run()"] + [f"{res[n][ort] / res[n][run]:.2f}×"
                                           for n in counts])
    print(table(["implementation", *(f"{n} thread{'s' * (n > 1)}" for n in counts)], rows))


# ------------------------------------------------------------------------------- output
def table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"
    return "\n".join([fmt(head), "|" + "|".join("-" * (x + 2) for x in w) + "|",
                      *map(fmt, rows)])


def host() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="alternate the implementations over R rounds and report the median "
                        "(use 3+ on a machine with other load)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="one-thread calls timed by the wall clock (default) or the calling "
                        "thread's CPU time (keeps other processes' load out)")
    p.add_argument("--threads", type=int, default=all_cores(), metavar="T",
                   help="the 'all threads' count (default: the cores this process may use)")
    p.add_argument("--avx2", action="store_true",
                   help="generated code for -march=x86-64-v3, numpy and torch limited to AVX2")
    p.add_argument("--no-products", action="store_true", help="only the MLP step")
    p.add_argument("--no-step", action="store_true", help="only the products")
    p.add_argument("--shapes", type=shapes, default=SHAPES, metavar="NxCINxCOUT,...",
                   help="the product shapes (default: "
                        + ",".join("x".join(map(str, s)) for s in SHAPES) + ")")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: only the three products in bf16, against fp32 C, torch bf16 "
                        "and torch autocast (default fp32: everything above)")
    a = p.parse_args()
    for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = "1"   # before numpy / torch load their thread pools
    if a.avx2:
        os.environ.update(AVX2_ENV)
    march = ["-march=x86-64-v3"] if a.avx2 else ["-march=native"]
    a.cflags = ["-O3", *march, "-std=c99"]
    a.timer = Timer(a.clock == "cpu")

    import numpy as np
    import onnxruntime

    torch = _torch(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# lincompile C backend benchmark — {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"host: {host()}, {all_cores()} cores available; python {platform.python_version()}"
          f", numpy {np.__version__}, onnxruntime {onnxruntime.__version__}"
          + (f", torch {torch.__version__}" if torch else "") + f"; cflags {' '.join(a.cflags)}"
          f"; clock {a.clock}, repeat {a.repeat}; load average at start {load:.1f}")
    if a.precision == "bf16":
        head = ["product", "N×C_in×C_out", "C bf16 GFLOP/s", "C fp32", "bf16 / fp32",
                "torch bf16", "torch autocast", "C bf16 / torch bf16", "kernel"]
        for n in [1] + ([a.threads] if a.threads > 1 else []):
            print(f"\nLinear products in bf16, {n} thread{'s' * (n > 1)}"
                  f"{'' if n == 1 else ' (wall clock)'}:\n")
            print(table(head, bench_bf16_products(a, n)))
        print("\nMLP training steps (relu, cross-entropy + SGD), 1 thread, ms per step:\n")
        print(table(["MLP", "batch", "C fp32", "C bf16", "fp32 / bf16", "torch fp32",
                     "torch autocast bf16"], bench_bf16_steps(a)))
        end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nload average at the end: {end:.1f}")
        return
    pk = peak(march)
    print(f"fp32 FMA peak: {pk:.1f} GFLOP/s per core (benchmarks/peak.c, {' '.join(march)}, "
          "best of 0.3 s of trials); each row's % of peak is of the 'peak' column: the same "
          "FMA loop timed in that row's interleaved rounds, as the products\n")
    if not a.no_products:
        probe = PeakProbe(march)
        head = ["product", "N×C_in×C_out", "C GFLOP/s", "% of peak", "peak", "numpy",
                "onnxruntime", "torch", "C / best"]
        if a.avx2:
            print("(--avx2: numpy and torch limited to AVX2; onnxruntime keeps its own "
                  "kernels and is left out of 'C / best')\n")
        print("Linear products, 1 thread:\n")
        print(table(head, bench_products(a, 1, probe)))
        if a.threads > 1:
            print(f"\nLinear products, {a.threads} threads (% of {a.threads} × peak; wall "
                  "clock):\n")
            print(table(head, bench_products(a, a.threads, probe)))
    if not a.no_step:
        print_train_step(a)
    end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end: {end:.1f}")


if __name__ == "__main__":
    main()
