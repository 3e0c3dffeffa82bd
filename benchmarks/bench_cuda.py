"""lincompile's generated CUDA against cuBLAS / torch eager, on the GPU at hand.

Times with CUDA events, after warm-up, taking medians:

- the three Linear products (Y = X·Wᵀ + b, dX = dY·W, dW = dYᵀ·X) at (N, C_in, C_out) =
  (4096, 4096, 4096) and (64, 784, 128), each lincompile graph (weights as inputs) against
  the same product in torch (cuBLAS, TF32 off: plain fp32 like ours);
- the 784-128-10 MLP training step at batch 64 (cross-entropy; SGD, and Adam) against the
  same step in torch eager (zero_grad, forward, loss, backward, optimizer step).

Bars: ≥ 0.7× cuBLAS for each product at 4096³; the training step faster than torch eager.
The ratio table comes last; ``--out DIR`` also writes ``bench_cuda.json`` and ``.txt``.

``--dry-run`` needs no GPU: it builds every graph, checks it on the CPU emulator at small
sizes against numpy, compiles it with nvcc when there is one, and prints the table's
layout with no timings. Run from the source tree: ``PYTHONPATH=. python benchmarks/bench_cuda.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lincompile as lc
from lincompile.backends import cuda
from lincompile.backends.cuda_build import find_nvcc

SHAPES = [(4096, 4096, 4096), (64, 784, 128)]     # (N, C_in, C_out)
PRODUCT_BAR = 0.7      # ≥ 0.7× cuBLAS at 4096³
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
OPTIMIZERS = {"SGD": (lc.SGD(0.1), lambda torch, p: torch.optim.SGD(p, lr=0.1)),
              "Adam": (lc.Adam(0.001), lambda torch, p: torch.optim.Adam(p, lr=0.001))}


def product_graph(name: str, n: int, c_in: int, c_out: int) -> lc.Graph:
    g = lc.Graph("product")
    g.output(PRODUCTS[name][0](g, n, c_in, c_out), name="y")
    return g.verify()


def mlp() -> lc.Graph:
    g = lc.Graph("mlp784", seed=0)
    h = g.relu(g.linear(g.input("x", ["N", 784]), 128, name="fc1"))
    g.output(g.linear(h, 10, name="fc2"))
    return g.verify()


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
                 "TFLOP/s: lincompile/torch; torch = cuBLAS fp32 (TF32 off) or torch eager")
    return "\n".join(lines)


# ---------------------------------------------------------------------- dry run
def dry_run() -> list[dict]:
    """Everything but the GPU: graphs, emulated numerics at small sizes, nvcc builds."""
    rows, nvcc = [], find_nvcc()
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check the pipeline only")
    ap.add_argument("--out", help="folder for bench_cuda.json and bench_cuda.txt")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (default 30)")
    a = ap.parse_args(argv)
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    if a.dry_run:
        device = f"dry run, no GPU (nvcc: {find_nvcc() or 'absent'})"
        rows = dry_run()
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
    text = table(rows, f"lincompile CUDA vs torch on {device}, {date}")
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
