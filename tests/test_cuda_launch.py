"""Fewer launches per training step on the CUDA targets.

- All optimizer updates of a step run as one launch over a table of the parameters, the
  bias-gradient column sums as another and, in bf16, the copies of inputs and weights as a
  third: the generated code has one launch of each, and the step matches the float64
  reference on target cuda-cpu (every optimizer, fp32 and bf16); a sum whose result a
  step reads before the group's place stays on its own.
- bind(feeds) captures the step into a CUDA graph once and replays it (graph=False: plain
  launches). Without a GPU only its logic is tested, against a fake CUDA runtime that
  records the calls; with one, graph replays must give the bits of plain launches.
- The benchmark's precision rows (dry run) and the sanitizer script (on cuda-cpu).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import mlp

import lincompile as lc
from lincompile.backends import cuda
from lincompile.backends.cuda_kernels import FusedStep
from lincompile.backends.reference import ReferenceExecutable
from lincompile.validate import compare

OPTIMIZERS = {"sgd": lc.SGD(0.1), "momentum": lc.SGD(0.05, 0.9, 1e-2), "adam": lc.Adam(0.01),
              "adamw": lc.AdamW(0.01, weight_decay=0.1)}


def check(exe, g, batches=(1, 33), bound=1e-5):
    for n in batches:
        feeds = lc.random_feeds(g, n, seed=n)
        got = exe.run(feeds)
        ref = ReferenceExecutable(g, "float64").run(feeds)
        bad = [r for r in (compare(exe.target, k, got[k], v, bound) for k, v in ref.items())
               if not r.ok]
        assert not bad, f"batch {n}: {bad}"


def launches(src: str, what: str) -> int:
    return src.count(f"{what} in one launch */")


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_updates_and_bias_sums_fuse(opt):
    g = lc.training_graph(mlp((20, 16, 12, 4), seed=3), loss="cross-entropy",
                          optimizer=OPTIMIZERS[opt])
    exe = lc.compile(g, "cuda-cpu")
    src = exe.source()
    assert launches(src, "updates") == 1       # 3 biases (plain SGD: weights fuse into dW)
    assert launches(src, "column sums") == 1   # the 3 bias gradients
    steps = exe.entry.steps
    fused = [s for s in steps if isinstance(s, FusedStep)]
    assert sorted(len(s.parts) for s in fused) == ([3, 3] if opt == "sgd" else [3, 6])
    assert not [s for s in steps if s.kernel in ("sgd", "adam", "reduce_sum")
                and not isinstance(s, FusedStep)], "a step left with a launch of its own"
    check(exe, g)


def test_fused_step_in_bf16():
    g = lc.training_graph(mlp((20, 16, 12, 4), act="tanh", seed=3), loss="mse",
                          optimizer=OPTIMIZERS["adam"], emit_grads=True)
    exe = lc.compile(g, "cuda-cpu", precision="bf16")
    assert launches(exe.source(), "updates") == 1
    assert launches(exe.source(), "bf16 copies") == 1   # x and the weights
    feeds = lc.random_feeds(g, 17, seed=1)
    feeds.update({k: np.asarray(v, feeds[k].dtype) for k, v in g.initial_state.items()})
    got = exe.run(feeds)
    ref = ReferenceExecutable(g, "float64").run(feeds)
    for k in (k for k in ref if k.endswith("bias.grad")):
        rel = np.linalg.norm(got[k] - ref[k]) / np.linalg.norm(ref[k])
        assert rel <= 2e-2, (k, rel)


def test_a_sum_read_early_is_not_moved():
    """s1 feeds the add that s2 sums: s1 cannot wait for s2's launch (the fusion would
    read s1 before writing it)."""
    g = lc.Graph("sums")
    x = g.input("x", ["N", 5])
    s1 = g.reduce_sum(x, axes=[0], name="s1")
    z = g.add(g.input("y", ["N", 5]), s1, name="z")
    s2 = g.reduce_sum(z, axes=[0], name="s2")
    s3 = g.reduce_sum(g.input("w", ["N", 7]), axes=[0], name="s3")
    for v in (s1, s2, s3):
        g.output(v)
    exe = lc.compile(g.verify(), "cuda-cpu")
    src = exe.source()
    assert launches(src, "column sums") == 1 and "2 steps in one launch" in src
    check(exe, g, batches=(1, 9, 600))


# ----------------------------------------------------------------------- CUDA graphs
class FakeRuntime:
    """The cudart calls BoundCuda makes, recorded; handles are small integers."""

    def __init__(self, fail_end: int = 0):
        self.calls, self.fail_end, self.next = [], fail_end, 100

    def _handle(self, out) -> int:
        self.next += 1
        out._obj.value = self.next
        return 0

    def cudaMalloc(self, out, size):
        self.calls.append(("malloc", size))
        return self._handle(out)

    def cudaStreamCreateWithFlags(self, out, flags):
        self.calls.append(("stream", flags))
        return self._handle(out)

    def cudaStreamBeginCapture(self, s, mode):
        self.calls.append(("begin", s, mode))
        return 0

    def cudaStreamEndCapture(self, s, out):
        self.calls.append(("end", s))
        self._handle(out)
        return self.fail_end

    def cudaGraphInstantiateWithFlags(self, out, graph, flags):
        self.calls.append(("instantiate", graph))
        return self._handle(out)

    def cudaGraphLaunch(self, e, s):
        self.calls.append(("launch", e, s))
        return 0

    def __getattr__(self, name):   # destroy / free
        return lambda *a: self.calls.append((name,)) or 0

    def cudaGetErrorString(self, code):
        return b"fake error"


class FakeExe:
    entry_name = "model_train_step"

    def __init__(self):
        self.runs = []

    def workspace_size(self, n):
        return 1000 * n

    def _fn(self, *args):
        self.runs.append(args[-1])   # the stream
        return 0


@pytest.fixture
def fake(monkeypatch):
    rt = FakeRuntime()
    monkeypatch.setattr(cuda, "cudart", lambda: rt)
    monkeypatch.setattr(cuda, "_current_stream", lambda lib: 7)
    return rt


def test_bind_captures_once_and_replays(fake):
    exe = FakeExe()
    b = cuda.BoundCuda(exe, 4, [11, 12, 13], {}, "torch")
    assert not b.captured
    b()   # runs on the current stream, then records on a stream of its own
    assert exe.runs[0] == 7 and len(exe.runs) == 2 and exe.runs[1] != 7 and b.captured
    kinds = [c[0] for c in fake.calls]
    assert kinds == ["malloc", "stream", "begin", "end", "instantiate"]
    assert fake.calls[2] == ("begin", exe.runs[1], cuda.CAPTURE_MODE)
    for _ in range(3):
        b()
    assert len(exe.runs) == 2   # no more plain launches
    launches_ = [c for c in fake.calls if c[0] == "launch"]
    assert len(launches_) == 3 and all(c[2] == 7 for c in launches_)
    assert launches_[0][1] == dict((c[0], c) for c in fake.calls)["instantiate"][1] + 1
    del b
    names = [c[0] for c in fake.calls]
    assert {"cudaGraphExecDestroy", "cudaGraphDestroy", "cudaStreamDestroy",
            "cudaFree"} <= set(names)


def test_bind_without_graph_launches_every_time(fake):
    exe = FakeExe()
    b = cuda.BoundCuda(exe, 4, [1], {}, "torch", graph=False)
    for _ in range(3):
        b()
    assert exe.runs == [7, 7, 7] and not b.captured
    assert [c[0] for c in fake.calls] == ["malloc"]


def test_failed_capture_ends_it_and_says_how_to_opt_out(monkeypatch):
    rt = FakeRuntime(fail_end=900)
    monkeypatch.setattr(cuda, "cudart", lambda: rt)
    monkeypatch.setattr(cuda, "_current_stream", lambda lib: 0)
    b = cuda.BoundCuda(FakeExe(), 2, [1], {}, "cupy")
    with pytest.raises(cuda.CudaError, match="graph=False"):
        b()
    assert [c[0] for c in rt.calls][-2:] == ["begin", "end"] and not b.captured


@pytest.mark.skipif(not cuda.gpu_available(), reason="needs a GPU")
@pytest.mark.parametrize("prec", ["fp32", "tf32", "bf16"])
def test_graph_replays_match_plain_launches_on_the_gpu(prec):
    """Four steps with new data each time: the captured graph and plain launches give the
    same bits (the kernels are deterministic)."""
    torch = pytest.importorskip("torch")
    g = lc.training_graph(mlp((30, 37, 129, 7), seed=5), loss="cross-entropy",
                          optimizer=OPTIMIZERS["momentum"])
    exe = lc.compile(g, "cuda", precision=prec)
    feeds = lc.random_feeds(g, 13, seed=0)
    feeds.update({k: np.asarray(v, feeds[k].dtype) for k, v in g.initial_state.items()})
    dev = [{k: torch.from_numpy(np.array(v)).cuda() for k, v in feeds.items()}
           for _ in range(2)]
    graphed, plain = exe.bind(dev[0]), exe.bind(dev[1], graph=False)
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = torch.from_numpy(rng.standard_normal((13, 30)).astype(np.float32)).cuda()
        for d in dev:
            d["x"].copy_(x)
        graphed()
        plain()
    torch.cuda.synchronize()
    assert graphed.captured and not plain.captured
    for k in graphed.outputs:
        assert torch.equal(graphed.outputs[k], plain.outputs[k]), k


def test_benchmark_precision_rows_dry_run(tmp_path):
    """bench_cuda.py --precisions: a product row per precision and shape, a step row per
    step and precision, each graph emulated at a small size (nvcc builds are tested
    elsewhere); gpu_check.sh, which runs it, parses."""
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run(["bash", "-n", str(root / "benchmarks" / "gpu_check.sh")]).returncode == 0
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_cuda.py"), "--dry-run",
                        "--skip-nvcc", "--precisions", "fp32,bf16", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("ratio = torch time / lincompile time")
    assert sum(" bf16 " in ln and ("4096x4096x4096" in ln or "8192x8192x8192" in ln)
               for ln in lines) == 6
    steps = [ln for ln in lines if ", N=" in ln and (" fp32 " in ln or " bf16 " in ln)
             and ln.split(",")[0] in ("784-128-10", "1024-4096-4096-1024", "4096-8192-8192-4096")]
    assert len(steps) == 6, steps
    assert any("≥ 2.0×" in ln for ln in steps) and any("≥ 0.8×" in ln for ln in steps)
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "sanitize_cuda.py"), "--target",
                        "cuda-cpu"], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0 and r.stdout.count("ran at N = 1, 13, 130") == 3, r.stdout + r.stderr
