"""lincompile's generated CUDA against cuBLAS / torch eager, on the GPU at hand.

Times with CUDA events, after warm-up, taking medians:

- the three Linear products (Y = X·Wᵀ + b, dX = dY·W, dW = dYᵀ·X) at (N, C_in, C_out) =
  (4096, 4096, 4096) and (64, 784, 128), each lincompile graph (weights as inputs) against
  the same product in torch (cuBLAS, TF32 off: plain fp32 like ours);
- the 784-128-10 MLP training step at batch 64 (cross-entropy; SGD, and Adam) against the
  same step in torch eager (zero_grad, forward, loss, backward, optimizer step).

Bars: ≥ 0.8× cuBLAS for each fp32 product at 4096³ (measured 0.80–0.82×); the training step
faster than torch eager.

``--precisions fp32,tf32,bf16`` adds, per precision beyond fp32:

- the three products at 4096³ and 8192³ against torch matmul in the same precision (fp32
  tensors with ``allow_tf32``, or bf16 tensors); our bf16 graphs read and write fp32, so
  their time includes making the bf16 operand copies. Bar: ≥ 0.6× torch. On an sm_90 GPU
  the tf32/bf16 graphs are built for sm_90a: these products run the wgmma + TMA kernels
  (bf16 all three, tf32 Y only: wgmma reads tf32 K-major; the tf32 dX and dW rows are
  mma.sync); ``LINCOMPILE_WGMMA=0`` times the mma.sync kernels instead.
- and for every precision the training steps 784-128-10 (N=64), 1024-4096-4096-1024
  (N=512) and 4096-8192-8192-4096 (N=4096), cross-entropy + SGD with momentum, replayed
  from a CUDA graph (``bind``), against torch eager in the same precision, torch eager
  captured in a CUDA graph, and torch autocast bf16. Bars: 784-128-10 in fp32 ≥ 2× torch
  with a CUDA graph; 4096-8192-8192-4096 in bf16 ≥ 0.8× torch autocast.

Every graph is built first, in parallel. The ratio table comes last; ``--out DIR`` also
writes ``bench_cuda.json`` and ``.txt``.

``--dry-run`` needs no GPU: it builds every graph, checks it on the CPU emulator at small
sizes against numpy, compiles it with nvcc when there is one (``--skip-nvcc``: not), and
prints the tables' layout with no timings. Run from the source tree:
``PYTHONPATH=. python benchmarks/bench_cuda.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lincompile as lc
from lincompile.backends import cuda
from lincompile.backends.cuda_build import find_nvcc

SHAPES = [(4096, 4096, 4096), (64, 784, 128)]     # (N, C_in, C_out)
PRODUCT_BAR = 0.8      # ≥ 0.8× cuBLAS at 4096³ (fp32)
PRODUCTS = {           # name -> (lincompile graph builder, torch op, numpy op)
    "Y = X·Wᵀ + b  (nt)": (
        lambda g, n, i, o: g.apply("linear", [g.input("x", ["N", i]), g.input("w", [o, i]),
                                              g.input("b", [o])]),
        lambda f: __import__("torch").nn.functional.linear(f["x"], f["w"], f["b"]),
        lambda f: f["x"] @ f["w"].T + f["b"]),
    "dX = dY·W     (nn)": (
        lambda g, n, i, o: g.matmul(g.input("dy", ["N", o]), g.input("w", [o, i])),
        lambda f: f["dy"] @ f["w"],
        lambda f: f["dy"] @ f["w"]),
    "dW = dYᵀ·X    (tn)": (
        lambda g, n, i, o: g.matmul(g.input("dy", ["N", o]), g.input("x", ["N", i]),
                                    trans_a=True),
        lambda f: f["dy"].T @ f["x"],
        lambda f: f["dy"].T @ f["x"]),
}
PREC_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192)]
PREC_BAR = 0.6         # tf32 / bf16 products ≥ 0.6× torch in the same precision
#: The training steps timed per precision: (layer sizes, batch, bar).
STEPS = {"784-128-10": ((784, 128, 10), 64),
         "1024-4096-4096-1024": ((1024, 4096, 4096, 1024), 512),
         "4096-8192-8192-4096": ((4096, 8192, 8192, 4096), 4096)}
STEP_OPT = (lc.SGD(0.01, 0.9), lambda torch, p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
OPTIMIZERS = {"SGD": (lc.SGD(0.1), lambda torch, p: torch.optim.SGD(p, lr=0.1)),
              "Adam": (lc.Adam(0.001), lambda torch, p: torch.optim.Adam(p, lr=0.001))}


def product_graph(name: str, n: int, c_in: int, c_out: int) -> lc.Graph:
    g = lc.Graph("product")
    g.output(PRODUCTS[name][0](g, n, c_in, c_out), name="y")
    return g.verify()


def mlp(sizes=(784, 128, 10)) -> lc.Graph:
    g = lc.Graph("mlp" + "_".join(map(str, sizes)), seed=0)
    h = g.input("x", ["N", sizes[0]])
    for i, n in enumerate(sizes[1:], 1):
        h = g.linear(h, n, name=f"fc{i}")
        h = g.relu(h) if i < len(sizes) - 1 else h
    g.output(h)
    return g.verify()


def prebuild(jobs: list, threads: int = 16) -> list:
    """lc.compile(graph, "cuda", precision=p) for each (graph, p), in parallel (nvcc runs
    as a subprocess; the build cache makes the later compiles of the same graph free)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda j: lc.compile(j[0], "cuda", precision=j[1]), jobs))


def median_ms(torch, fn, warmup: int, reps: int, inner: int) -> float:
    """Median over ``reps`` of the time per call of ``inner`` back-to-back calls, measured
    with CUDA events on the current stream after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


# ---------------------------------------------------------------------- GPU timing
def time_products(torch, reps: int) -> list[dict]:
    rows = []
    for n, c_in, c_out in SHAPES:
        big = n * c_in * c_out >= 1 << 30
        for name, (_, torch_op, _) in PRODUCTS.items():
            g = product_graph(name, n, c_in, c_out)
            exe = lc.compile(g, "cuda")
            feeds = {k: torch.from_numpy(v).cuda() for k, v in
                     lc.random_feeds(g, n, seed=0).items()}
            bound = exe.bind(feeds)
            bound()
            want = torch_op(feeds)
            torch.cuda.synchronize()
            err = float((bound.outputs["y"] - want).abs().max() / want.abs().max())
            inner = 1 if big else 20
            ours = median_ms(torch, bound, 3, reps, inner)
            ref = median_ms(torch, lambda f=feeds, op=torch_op: op(f), 3, reps, inner)
            rows.append(row(name, f"{n}x{c_in}x{c_out}", ours, ref, 2 * n * c_in * c_out,
                            PRODUCT_BAR if big else None, err))
    return rows


def time_training(torch, reps: int) -> list[dict]:
    rows = []
    for name, (ours_opt, make_opt) in OPTIMIZERS.items():
        m = mlp()
        t = lc.training_graph(m, loss="cross-entropy", optimizer=ours_opt)
        exe = lc.compile(t, "cuda")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 784)).astype(np.float32)
        y = rng.integers(0, 10, 64).astype(np.int64)
        feeds = {"x": x, "target": y, "lr": np.float32(ours_opt.lr), **t.initial_state}
        dev = {k: torch.from_numpy(np.array(v)).cuda() for k, v in feeds.items()}
        first = exe.run(dev)   # one step, compared with torch's first step below
        bound = exe.bind(dev)  # in place: every call trains on

        model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10)).cuda()
        with torch.no_grad():
            for p, k in zip(model.parameters(), ["fc1.weight", "fc1.bias", "fc2.weight",
                                                 "fc2.bias"]):
                p.copy_(torch.from_numpy(m.params[k].data))
        opt = make_opt(torch, list(model.parameters()))
        xt, yt = dev["x"], dev["target"]

        def torch_step(model=model, opt=opt, xt=xt, yt=yt):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            return loss

        loss = torch_step()
        torch.cuda.synchronize()
        err = max(abs(float(first["loss"]) - float(loss)),
                  float((first["fc2.weight.next"] - model[2].weight).abs().max()))
        ours = median_ms(torch, bound, 10, reps, 10)
        ref = median_ms(torch, torch_step, 10, reps, 10)
        rows.append(row(f"train step, {name}", "784-128-10, N=64", ours, ref, None, 1.0, err))
    return rows


@contextlib.contextmanager
def torch_precision(torch, prec: str):
    """torch's matmuls in ``prec``: TF32 allowed for tf32 (fp32 otherwise); bf16 is chosen
    by the tensors' dtype or by autocast."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def time_precision_products(torch, prec: str, reps: int) -> list[dict]:
    rows = []
    jobs = [(product_graph(name, *shape), prec) for shape in PREC_SHAPES for name in PRODUCTS]
    exes = iter(prebuild(jobs))
    for n, c_in, c_out in PREC_SHAPES:
        for name, (_, torch_op, _) in PRODUCTS.items():
            exe = next(exes)
            gen = torch.Generator(device="cuda").manual_seed(0)
            feeds = {v.name: torch.randn([n if isinstance(d, str) else d for d in v.shape],
                                         generator=gen, device="cuda")
                     for v in exe.graph.inputs}
            bound = exe.bind(feeds)
            bound()
            theirs = {k: v.to(torch.bfloat16) if prec == "bf16" else v for k, v in feeds.items()}
            with torch_precision(torch, prec):
                want = torch_op(theirs).float()
                torch.cuda.synchronize()
                err = float((bound.outputs["y"] - want).abs().max() / want.abs().max())
                ours = median_ms(torch, bound, 2, reps, 1)
                ref = median_ms(torch, lambda f=theirs, op=torch_op: op(f), 2, reps, 1)
            rows.append(row(f"{name} {prec}", f"{n}x{c_in}x{c_out}", ours, ref,
                            2 * n * c_in * c_out, PREC_BAR, err))
    return rows


def torch_step(torch, sizes, params: dict, x, y, autocast: bool):
    """(step function, model) of the torch MLP with our initial parameters."""
    layers = []
    for i in range(1, len(sizes)):
        layers.append(torch.nn.Linear(sizes[i - 1], sizes[i]))
        if i < len(sizes) - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    with torch.no_grad():
        for i, lin in enumerate(m for m in model if isinstance(m, torch.nn.Linear)):
            lin.weight.copy_(torch.from_numpy(params[f"fc{i + 1}.weight"]))
            lin.bias.copy_(torch.from_numpy(params[f"fc{i + 1}.bias"]))
    opt = STEP_OPT[1](torch, list(model.parameters()))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def torch_graphed(torch, step):
    """``step`` captured in a CUDA graph (warm-up on a side stream, as torch documents)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def step_bar(name: str, prec: str) -> float | None:
    return {("784-128-10", "fp32"): 2.0, ("4096-8192-8192-4096", "bf16"): 0.8}.get(
        (name, prec))


def all_jobs(precisions: list[str]) -> list:
    """Every (graph, precision) the timings compile."""
    jobs = [(product_graph(name, *shape), "fp32") for shape in SHAPES for name in PRODUCTS]
    jobs += [(lc.training_graph(mlp(), loss="cross-entropy", optimizer=o), "fp32")
             for o, _ in OPTIMIZERS.values()]
    jobs += [(product_graph(name, *shape), p) for p in precisions if p != "fp32"
             for shape in PREC_SHAPES for name in PRODUCTS]
    if precisions != ["fp32"]:
        jobs += [(lc.training_graph(mlp(sizes), loss="cross-entropy", optimizer=STEP_OPT[0]), p)
                 for sizes, _ in STEPS.values() for p in precisions]
    return jobs


def time_steps(torch, precisions: list[str], reps: int) -> list[dict]:
    rows, jobs = [], []
    graphs = {}
    for name, (sizes, _) in STEPS.items():
        graphs[name] = lc.training_graph(mlp(sizes), loss="cross-entropy", optimizer=STEP_OPT[0])
        jobs += [(graphs[name], p) for p in precisions]
    exes = iter(prebuild(jobs))
    for name, (sizes, batch) in STEPS.items():
        t = graphs[name]
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.standard_normal((batch, sizes[0])).astype(np.float32)).cuda()
        y = torch.from_numpy(rng.integers(0, sizes[-1], batch)).cuda()
        params = {k: np.asarray(v) for k, v in t.initial_state.items()}
        big = batch * sum(a * b for a, b in itertools.pairwise(sizes)) > 1 << 30
        warm, inner = (2, 1) if big else (10, 10)
        n_reps = min(reps, 10) if big else reps
        theirs = {}
        for prec in ("fp32", "tf32", "bf16"):
            with torch_precision(torch, prec):
                step = torch_step(torch, sizes, params, x, y, prec == "bf16")
                eager = median_ms(torch, step, warm, n_reps, inner)
                replay = torch_graphed(torch, step)
                theirs[prec] = (eager, median_ms(torch, replay, warm, n_reps, inner))
        flops = 6 * batch * sum(a * b for a, b in itertools.pairwise(sizes))
        for prec in precisions:
            exe = next(exes)
            dev = {k: torch.from_numpy(np.array(v)).cuda() for k, v in t.initial_state.items()}
            dev.update(x=x, target=y, lr=torch.tensor(np.float32(STEP_OPT[0].lr)).cuda())
            bound = exe.bind(dev)
            ours = median_ms(torch, bound, warm, n_reps, inner)
            bar = step_bar(name, prec)
            ref = theirs["bf16"][0] if prec == "bf16" else theirs[prec][1]
            r = row(f"step {prec}", f"{name}, N={batch}", ours, ref, flops, bar, None)
            r.update(torch_eager_ms=theirs[prec][0], torch_graph_ms=theirs[prec][1],
                     torch_autocast_ms=theirs["bf16"][0], precision=prec)
            rows.append(r)
    return rows


def step_table(rows: list[dict]) -> str:
    head = (f"{'step':<34} {'ours ms':>9} {'eager':>9} {'graph':>9} {'autocast':>9} "
            f"{'TFLOP/s':>8} {'ratio':>7}  bar")
    lines = ["training steps (SGD + momentum) per precision: ours replayed from a CUDA graph; "
             "torch in the same precision eager / captured, and autocast bf16 eager", head,
             "-" * len(head)]
    f = lambda v, w, p: f"{'n/a':>{w}}" if v is None or v != v else f"{v:{w}.{p}f}"
    for r in rows:
        bar = "" if r["bar"] is None else (f"≥ {r['bar']:.1f}× " + {
            True: "PASS", False: "FAIL", None: "n/a"}[r["pass"]])
        lines.append(f"{r['shape'] + ' ' + r['precision']:<34} {f(r['lincompile_ms'], 9, 3)} "
                     f"{f(r.get('torch_eager_ms'), 9, 3)} {f(r.get('torch_graph_ms'), 9, 3)} "
                     f"{f(r.get('torch_autocast_ms'), 9, 3)} "
                     f"{f(r['lincompile_tflops'], 8, 1)} {f(r['speed_vs_torch'], 6, 2)}×  {bar}")
    lines.append("ratio: against torch captured in a CUDA graph in the same precision (bf16: "
                 "against torch autocast eager)")
    return "\n".join(lines)


def row(what, shape, ours, ref, flops, bar, err) -> dict:
    ratio = ref / ours if ours and ref else float("nan")
    ok = None if bar is None or ratio != ratio else (ratio > bar if bar == 1.0 else ratio >= bar)
    return {"what": what, "shape": shape, "lincompile_ms": ours, "torch_ms": ref,
            "lincompile_tflops": flops / ours / 1e9 if flops and ours else None,
            "torch_tflops": flops / ref / 1e9 if flops and ref else None,
            "speed_vs_torch": ratio, "bar": bar, "pass": ok, "max_rel_err": err}


def table(rows: list[dict], title: str) -> str:
    head = (f"{'what':<24} {'shape':<17} {'lincompile ms':>13} {'torch ms':>9} "
            f"{'TFLOP/s':>15} {'ratio':>7}  bar")
    lines = [title, head, "-" * len(head)]
    def fmt(v, width: int, prec: int) -> str:
        return f"{'n/a':>{width}}" if v is None or v != v else f"{v:{width}.{prec}f}"

    for r in rows:
        tf = (f"{fmt(r['lincompile_tflops'], 1, 1)}/{fmt(r['torch_tflops'], 1, 1)}"
              if r["lincompile_tflops"] else "")
        bar = "" if r["bar"] is None else (("> " if r["bar"] == 1.0 else "≥ ") +
                                           f"{r['bar']:.2f}× " + {True: "PASS", False: "FAIL",
                                                                  None: "n/a"}[r["pass"]])
        lines.append(f"{r['what']:<24} {r['shape']:<17} {fmt(r['lincompile_ms'], 13, 4)} "
                     f"{fmt(r['torch_ms'], 9, 4)} {tf:>15} "
                     f"{fmt(r['speed_vs_torch'], 6, 2)}×  {bar}")
    lines.append("ratio = torch time / lincompile time (> 1: lincompile faster); "
                 "TFLOP/s: lincompile/torch; torch = cuBLAS in the row's precision (fp32: TF32 "
                 "off) or torch eager")
    return "\n".join(lines)


# ---------------------------------------------------------------------- dry run
def dry_run(nvcc: bool = True) -> list[dict]:
    """Everything but the GPU: graphs, emulated numerics at small sizes, nvcc builds."""
    rows = []
    for n, c_in, c_out in SHAPES:
        big = n * c_in * c_out >= 1 << 30
        for name, (_, _, np_op) in PRODUCTS.items():
            g = product_graph(name, n, c_in, c_out)
            small = product_graph(name, 37, 45, 33)   # emulating 4096³ would take hours
            feeds = lc.random_feeds(small, 37, seed=0)
            got = lc.compile(small, "cuda-cpu").run(feeds)["y"]
            want = np_op({k: v.astype(np.float64) for k, v in feeds.items()})
            err = float(np.abs(got - want).max() / np.abs(want).max())
            assert err < 1e-5, (name, err)
            if nvcc:
                lc.compile(g, "cuda")
            rows.append(row(name, f"{n}x{c_in}x{c_out}", None, None, None,
                            PRODUCT_BAR if big else None, err))
    for name, (ours_opt, _) in OPTIMIZERS.items():
        t = lc.training_graph(mlp(), loss="cross-entropy", optimizer=ours_opt)
        report = lc.validate(t, ["cuda-cpu"], batch=64)
        assert report.ok, str(report)
        if nvcc:
            lc.compile(t, "cuda")
        rows.append(row(f"train step, {name}", "784-128-10, N=64", None, None, None, 1.0,
                        max(r.rel for r in report.rows)))
    return rows


def dry_run_precisions(precisions: list[str], nvcc: bool) -> tuple[list[dict], list[dict]]:
    """The precision rows without a GPU: each graph built (in parallel) and emulated at
    small sizes: products against numpy of operands rounded as the precision does (their
    1e-5 bound is in the tests; here 2e-2 against float64), steps finite with the loss
    within 2e-2 of float64."""
    from lincompile.backends.reference import ReferenceExecutable

    rows, steps, jobs = [], [], []
    for prec in precisions:
        if prec == "fp32":
            continue
        for shape in PREC_SHAPES:
            for name, (_, _, np_op) in PRODUCTS.items():
                # past the emulator's wgmma thresholds (64 x 64 x 32): those kernels run
                small = product_graph(name, 70, 72, 66)
                feeds = lc.random_feeds(small, 70, seed=0)
                got = lc.compile(small, "cuda-cpu", precision=prec).run(feeds)["y"]
                want = np_op({k: v.astype(np.float64) for k, v in feeds.items()})
                err = float(np.abs(got - want).max() / np.abs(want).max())
                assert err < 2e-2, (name, prec, err)
                jobs.append((product_graph(name, *shape), prec))
                rows.append(row(f"{name} {prec}", "x".join(map(str, shape)), None, None, None,
                                PREC_BAR, err))
    for name, (sizes, batch) in STEPS.items():
        t = lc.training_graph(mlp(sizes), loss="cross-entropy", optimizer=STEP_OPT[0])
        small = lc.training_graph(mlp((sizes[0] // 16 + 5, 33, 9)), loss="cross-entropy",
                                  optimizer=STEP_OPT[0])
        for prec in precisions:
            feeds = lc.random_feeds(small, 37, seed=1)
            feeds.update({k: np.asarray(v, feeds[k].dtype) for k, v in
                          small.initial_state.items()})
            got = lc.compile(small, "cuda-cpu", precision=prec).run(feeds)
            ref = ReferenceExecutable(small, "float64").run(feeds)
            assert all(np.isfinite(v).all() for v in got.values()), (name, prec)
            err = abs(float(got["loss"]) - float(ref["loss"])) / abs(float(ref["loss"]))
            assert err < 2e-2, (name, prec, err)
            jobs.append((t, prec))
            r = row(f"step {prec}", f"{name}, N={batch}", None, None, None,
                    step_bar(name, prec), err)
            r["precision"] = prec
            steps.append(r)
    if nvcc:
        prebuild(jobs)
    return rows, steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check the pipeline only")
    ap.add_argument("--out", help="folder for bench_cuda.json and bench_cuda.txt")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (default 30)")
    ap.add_argument("--precisions", default="fp32", metavar="P,...",
                    help="fp32,tf32,bf16: the product rows beyond fp32 and the training "
                         "steps of each (default fp32: the fp32 tables only)")
    ap.add_argument("--skip-nvcc", action="store_true",
                    help="with --dry-run: emulate only, build nothing with nvcc")
    ap.add_argument("--build-only", action="store_true",
                    help="build every graph with nvcc (in parallel, into the build cache) "
                         "and stop: gpu_check.sh runs this beside the tests")
    a = ap.parse_args(argv)
    precisions = [p.strip() for p in a.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - set(cuda.PRECISIONS):
        ap.error(f"--precisions takes some of {', '.join(cuda.PRECISIONS)}")
    timed_steps = len(precisions) > 1 or precisions != ["fp32"]
    prec_rows, step_rows = [], []
    if a.build_only:
        jobs = all_jobs(precisions)
        prebuild(jobs)
        print(f"bench_cuda: built {len(jobs)} graphs")
        return 0
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    if a.dry_run:
        nvcc = find_nvcc() is not None and not a.skip_nvcc
        device = f"dry run, no GPU (nvcc: {find_nvcc() if nvcc else 'not used'})"
        rows = dry_run(nvcc)
        if timed_steps:
            prec_rows, step_rows = dry_run_precisions(precisions, nvcc)
    else:
        import torch

        if not torch.cuda.is_available() or not cuda.gpu_available():
            print("bench_cuda: no CUDA device (torch: "
                  f"{torch.cuda.is_available()}, lincompile: {cuda.gpu_available()})",
                  file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False   # cuBLAS in true fp32, like ours
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        device = (f"{torch.cuda.get_device_name(0)} ({cuda.device_arch()}), torch "
                  f"{torch.__version__}, CUDA {torch.version.cuda}")
        rows = time_products(torch, a.reps) + time_training(torch, a.reps)
        for prec in precisions:
            if prec != "fp32":
                prec_rows += time_precision_products(torch, prec, min(a.reps, 10))
        if timed_steps:
            step_rows = time_steps(torch, precisions, a.reps)
    text = table(rows + prec_rows, f"lincompile CUDA vs torch on {device}, {date}")
    if step_rows:
        text = step_table(step_rows) + "\n\n" + text
    rows = rows + prec_rows + step_rows
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_cuda.json").write_text(json.dumps(
            {"device": device, "date": date, "rows": rows}, indent=1))
        (out / "bench_cuda.txt").write_text(text + "\n")
    print(text)
    failed = [r["what"] + " " + r["shape"] for r in rows if r["pass"] is False]
    if failed:
        print(f"below the bar: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
