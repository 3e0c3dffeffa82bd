"""Which ONNX runtimes run lincompile's training graphs, in which form, and how fast.

    python benchmarks/bench_runtimes.py [--budget SECONDS]

For a 784-128-10 MLP at batch 64, every loss (mse, cross-entropy) × optimizer (sgd, sgd
momentum + weight decay, adam, adamw, none) is exported in both forms (default: local
functions; portable: one flat graph of standard ops) and run on one thread in onnxruntime,
onnx.reference, OpenVINO and tract (those installed). A case counts as run only when every
output matches lincompile's float64 reference (relative error ≤ 1e-4: the exported Adam
computes 1 − β₂ in float32, 1.3e-5 off, in every runtime). Prints a markdown table: per
runtime and form, the cases run, the range of their step times, and the range of each
case's time over onnxruntime's. A step time is the fastest of the runs made in ``--budget``
seconds: on a shared machine the fastest run is the one that reproduces.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"   # before numpy loads its thread pool

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import lincompile as lc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from runtimes import SESSIONS, available, session  # noqa: E402

OPTIMIZERS = {"sgd": lc.SGD(0.1), "sgd-momentum-wd": lc.SGD(0.1, momentum=0.9, weight_decay=1e-4),
              "adam": lc.Adam(), "adamw": lc.AdamW(), "none": None}
BOUND = 1e-4


def model() -> lc.Graph:
    g = lc.Graph("mlp", seed=0)
    h = g.relu(g.linear(g.input("x", ["N", 784]), 128, name="fc1"))
    g.output(g.linear(h, 10, name="fc2"))
    return g


def timeit(fn, budget: float) -> float:
    """The fastest of ≥ 5 calls made over about ``budget`` seconds, in seconds."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def feeds_of(t: lc.Graph, loss: str, rng: np.random.Generator) -> dict:
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    target = y if loss == "cross-entropy" else np.eye(10, dtype=np.float32)[y]
    feeds = {"x": x, "target": target, **t.initial_state}
    if any(v.name == "lr" for v in t.inputs):
        feeds["lr"] = np.array(float(t.meta["lincompile.lr"]), np.float32)
    return feeds


def check(out: dict, want: dict) -> None:
    for k, w in want.items():
        err = np.linalg.norm(out[k] - w) / max(np.linalg.norm(w), 1e-30)
        if not err <= BOUND:
            raise AssertionError(f"output '{k}' off by {err:.1e}")


def reason(e: Exception) -> str:
    """The line of a runtime's error that says what it refused."""
    lines = [x.strip(" -") for x in str(e).splitlines() if x.strip(" -")] or [type(e).__name__]
    said = [x for x in lines if "No conversion rule" in x or "Unimplemented" in x]
    line = (said or lines)[0]
    return line if len(line) <= 90 else line[:89] + "…"


def measure(budget: float) -> dict:
    """(runtime, form) -> {case: seconds per step, or the reason it did not run}."""
    results: dict[tuple[str, str], dict[str, float | str]] = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for loss in ("mse", "cross-entropy"):
            for name, opt in OPTIMIZERS.items():
                t = lc.training_graph(model(), loss=loss, optimizer=opt)
                feeds = feeds_of(t, loss, rng)
                want = lc.compile(t, "reference", dtype="float64").run(feeds)
                case = f"{loss}/{name}"
                for form in ("default", "portable"):
                    path = lc.save_onnx(t, Path(tmp) / f"{form}.onnx",
                                        portable=form == "portable")
                    for rt in SESSIONS:
                        if not available(rt):
                            continue
                        try:
                            run = session(rt, path)
                            check(run(feeds), want)
                            res: float | str = timeit(lambda run=run: run(feeds), budget)
                        except Exception as e:  # a runtime that refuses: its reason
                            res = reason(e)
                        results.setdefault((rt, form), {})[case] = res
    return results


def table(results: dict) -> str:
    ort = {case: s for case, s in results.get(("onnxruntime", "default"), {}).items()
           if isinstance(s, float)}
    lines = ["| runtime | form | cases run | step time (ms) | vs onnxruntime |",
             "|---|---|---|---|---|"]
    for (rt, form), cases in results.items():
        ok = {c: s for c, s in cases.items() if isinstance(s, float)}
        if not ok:
            why = next(iter(cases.values()))
            lines.append(f"| {rt} | {form} | 0 of {len(cases)}: `{why}` | – | – |")
            continue
        ms = [s * 1e3 for s in ok.values()]
        ratio = [s / ort[c] for c, s in ok.items() if c in ort]
        failed = sorted(set(cases) - set(ok))
        note = f" (not: {', '.join(failed)})" if failed else ""
        lines.append(f"| {rt} | {form} | {len(ok)} of {len(cases)}{note} | "
                     f"{min(ms):.2f}–{max(ms):.2f} | {min(ratio):.1f}–{max(ratio):.1f}× |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    a = p.parse_args()
    versions = []
    for rt, pkg in (("onnxruntime", "onnxruntime"), ("onnx", "onnx"),
                    ("openvino", "openvino"), ("tract", "tract")):
        if available(rt if rt != "onnx" else "onnx.reference"):
            mod = __import__(pkg)
            versions.append(f"{rt} {getattr(mod, '__version__', None) or mod.version()}")
    cpu = platform.processor() or platform.machine()
    print(f"{datetime.date.today()}, {platform.node()}: {cpu}, {os.cpu_count()} cores; one "
          f"thread; numpy {np.__version__}; {', '.join(versions)}")
    print("784-128-10 MLP, batch 64; step time: the fastest run of each case (loss × "
          "optimizer)\n")
    print(table(measure(a.budget)))


if __name__ == "__main__":
    main()
