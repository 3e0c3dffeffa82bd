"""The CUDA backends against independent oracles (the float64 numpy reference, torch on the
GPU when there is one), with nvcc checking every kernel template the backend can emit.

Without a GPU: every generated source is compiled by nvcc for sm_80 and sm_90 (skipped only
where nvcc is absent) with ``-Xptxas -v`` checked for spills, and the kernels run on the CPU
through the emulator (target "cuda-cpu", also run by every parametrized test of the suite).
With a GPU (conftest adds target "cuda"): the same checks run for real.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import mlp
from test_activations_more import grad_graph as more_acts_graph
from test_c_backend import ops_graph, ops_objective
from test_cuda_kernels import Job, parse_ptxas
from test_ops import CASES, build, objective
from test_ops_mlp import grad_graph as mlp_ops_graph

import lincompile as lc
from lincompile.backends import cuda
from lincompile.backends.cuda_build import find_nvcc
from lincompile.backends.cuda_kernels import NEUTRAL, SPECIAL, reduce_mode
from lincompile.backends.reference import ReferenceExecutable
from lincompile.validate import compare

ROOT = Path(__file__).resolve().parent.parent
GPU = cuda.gpu_available()
TARGETS = ["cuda-cpu"] + (["cuda"] if GPU else [])
EMU_BATCHES = (1, 31, 33, 70)       # around the emulated 32-row tiles
GPU_BATCHES = (1, 127, 130, 257)    # around the GPU's 128-row tiles
OPTIMIZERS = {"sgd": lc.SGD(0.1), "sgd-wd": lc.SGD(0.1, weight_decay=1e-2),
              "sgd-momentum-wd": lc.SGD(0.05, 0.9, 1e-2),
              "adam-l2": lc.Adam(0.01, weight_decay=1e-2), "adamw": lc.AdamW(0.01)}


def check(exe: lc.Executable, graph: lc.Graph, batch: int, seed: int = 0) -> dict:
    """Random feeds through ``exe``; every output within DESIGN §6's bound of float64."""
    feeds = lc.random_feeds(graph, batch, seed)
    ref = ReferenceExecutable(graph, "float64").run(feeds)
    got = exe.run(feeds)
    bad = [r for r in (compare(exe.target, k, got.get(k), v) for k, v in ref.items())
           if not r.ok]
    assert not bad, f"{graph.name} on {exe.target} at batch {batch}: {bad}"
    return got


def zoo() -> dict[str, lc.Graph]:
    """Graphs that together make the backend emit every kernel it has: each op's forward
    and gradient graph, the all-ops graph of the C tests, and training steps with every
    loss and optimizer (plain SGD fuses dW into the update)."""
    graphs = {}
    for case in sorted(CASES):
        g, wrt = objective(case)
        graphs[f"op_{case}"] = build(case)
        graphs[f"grad_{case}"] = lc.grad(g, of="L", wrt=wrt)
    graphs["ops"], graphs["ops_grad"] = ops_graph(), ops_objective()
    graphs["mlp_ops"] = mlp_ops_graph()   # the MLP ops and Linear over leading dims
    graphs["more_acts"] = more_acts_graph()   # ELU ... PReLU, forward and backward
    for loss in ("cross-entropy", "mse"):
        for name, opt in OPTIMIZERS.items():
            key = f"train_{loss}_{name}".replace("-", "_")
            graphs[key] = lc.training_graph(mlp((9, 20, 4), seed=3), loss=loss, optimizer=opt)
    graphs["train_adagrad"] = lc.training_graph(
        mlp((9, 20, 4), seed=3), optimizer=lc.Adagrad(0.1, weight_decay=0.01))
    graphs["preview_updates"] = preview_updates()
    return graphs


def preview_updates() -> lc.Graph:
    """One node of each ONNX training-preview optimizer (Momentum both ways, Adam)."""
    g = lc.Graph("preview")
    x, grad, v, h = (g.input(n, [5, 3]) for n in ("x", "g", "v", "h"))
    t, r = g.input("t", [], "int64"), g.input("r", [])
    for nesterov in (False, True):
        out = g.apply("onnx_momentum", [x, grad, v, t, r], alpha=0.9, beta=0.1,
                      nesterov=nesterov, norm_coefficient=0.01)
        g.output(out[0])
    g.output(g.apply("onnx_adam", [x, grad, v, h, t, r])[0])
    return g


# ------------------------------------------------------------------ nvcc, every kernel
@pytest.fixture(scope="module")
def nvcc_jobs(tmp_path_factory):
    """One .cu holding every graph of zoo() as an entry point (so every template the
    backend can emit), compiled by nvcc for sm_80 and sm_90 in parallel, host code included."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: cannot compile the generated CUDA on this machine")
    d = tmp_path_factory.mktemp("cuda_zoo")
    src = cuda._CudaSource(zoo(), "zoo", "sm_90", cuda.GPU_TILES)
    for name, text in src.files().items():
        (d / name).write_text(text)
    jobs = {arch: Job([nvcc, *cuda.NVCC_FLAGS, f"-arch={arch}", "-Xptxas", "-v",
                       "-Xcompiler", "-fPIC", "-Werror", "all-warnings", "-c", "model.cu",
                       "-o", f"model_{arch}.o"], d, f"nvcc {arch}")
            for arch in ("sm_80", "sm_90")}
    yield src, jobs
    for j in jobs.values():
        j.stop()


def test_zoo_emits_every_kernel(nvcc_jobs):
    src, _ = nvcc_jobs
    kernels = {s.kernel for e in src.entries for s in e.steps}
    assert set(NEUTRAL) | set(SPECIAL) | {"linear", "matmul", "sgd_gemm", "copy"} <= kernels
    modes = {reduce_mode(s)[0] for e in src.entries for s in e.steps if s.kernel == "reduce_sum"}
    assert modes == {"sum", "colsum", "generic"}
    text = src.files()["model.cu"]
    for gemm in ("lc_gemm_nt(", "lc_gemm_nn(", "lc_gemm_tn(", "lc_gemm_tt(", "lc_gemm_ex("):
        assert f"LC_CHECK({gemm}" in text, gemm


def test_nvcc_compiles_every_kernel_for_sm80_and_sm90_without_spills(nvcc_jobs):
    src, jobs = nvcc_jobs
    info = parse_ptxas(jobs["sm_80"].check() + jobs["sm_90"].check())
    n_kernels = sum(len(e.text["kernels"]) for e in src.entries)
    for arch in ("sm_80", "sm_90"):
        ours = [k for k in info if k[1] == arch and re.search(r"k\d+_", k[0])]
        gemm = [k for k in info if k[1] == arch and "lc_gemm_kernel" in k[0]]
        assert len(ours) >= n_kernels and len(gemm) == 8, (arch, len(ours), len(gemm))
    for (fn, arch), v in info.items():
        assert v.get("spill_st") == 0 and v.get("spill_ld") == 0, f"{fn} spills on {arch}: {v}"
        if "lc_gemm_kernel" in fn:
            assert v.get("stack") == 0, f"{fn} uses a stack frame on {arch}: {v}"
    print(f"\nnvcc: {n_kernels} generated kernels + the GEMM/reduction library, "
          f"{len(src.entries)} entry points, for sm_80 and sm_90: no spills")


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("target", TARGETS)
def test_every_op_forward_and_gradient_at_odd_batches(target):
    for g in (ops_graph(), ops_objective()):
        exe = lc.compile(g, target)
        for b in EMU_BATCHES:
            check(exe, g, b, seed=b)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_training_step_every_loss_and_optimizer(loss, opt):
    # without P.grad outputs, plain SGD accumulates dW into the update; sgd-wd (no momentum)
    # is here so that a fusion that dropped the weight decay fails
    t = lc.training_graph(mlp((9, 40, 4), seed=3), loss=loss, optimizer=OPTIMIZERS[opt])
    exe = lc.compile(t, "cuda-cpu")
    fused = "LC_CHECK(lc_gemm_ex(" in exe.source()
    assert fused if opt == "sgd" else opt == "sgd-wd" or not fused
    assert "LC_ACT_RELU" in exe.source()   # the activation runs in the GEMM epilogue
    for b in EMU_BATCHES:
        check(exe, t, b, seed=b)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_gpu_tiles_emulated_at_tile_edges(act):
    """The exact GPU configuration (128×128 tiles, 256 threads) on the emulator."""
    m = mlp((70, 130, 10), act=act, seed=2)
    t = lc.training_graph(m, loss="cross-entropy", optimizer=lc.SGD(0.1, momentum=0.9))
    for graph in (m, t):
        exe = cuda.compile_cpu(graph, tiles=cuda.GPU_TILES)
        assert "#define LC_GEMM_BM 128" in exe.source() and "#define LC_BLOCK 256" in exe.source()
        for b in GPU_BATCHES:
            check(exe, graph, b, seed=b)


def test_large_reductions_take_two_passes_and_are_deterministic():
    """Tall dBias (> 512 rows: two-pass lc_colsum), a loss over > 16·LC_BLOCK elements
    (several partial sums), and bit-identical results on a second run."""
    g = lc.Graph("wide", seed=7)
    x = g.input("x", ["N", 24])
    g.output(g.linear(x, 24, name="fc"))
    t = lc.training_graph(g, loss="mse", optimizer=lc.SGD(0.1, momentum=0.5))
    exe = lc.compile(t, "cuda-cpu")
    feeds = lc.random_feeds(t, 1500, seed=3)
    one, two = exe.run(feeds), exe.run(feeds)
    check(exe, t, 1500, seed=3)
    for k in one:
        assert one[k].tobytes() == two[k].tobytes(), k
    total = lc.Graph("total")
    total.output(total.reduce_sum(total.input("x", ["N", 30])), name="s")
    for b in (1, 700):   # 21000 elements: lc_sum's two passes
        check(lc.compile(total, "cuda-cpu"), total, b, seed=b)


@pytest.mark.parametrize("target", TARGETS)
def test_hundred_steps_with_the_gpu_configuration(target):
    """100 Adam steps with the GPU's tiles (emulated, and on the GPU where there is one):
    the whole loss curve and the final parameters and moments follow the float64 reference."""
    t = lc.training_graph(mlp((20, 16, 4), seed=1), optimizer=lc.Adam(0.01))
    x = np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    ref = ReferenceExecutable(t, "float64")
    got = cuda.compile_cpu(t, tiles=cuda.GPU_TILES) if target == "cuda-cpu" else \
        lc.compile(t, "cuda")
    s_ref, s_got = dict(t.initial_state), dict(t.initial_state)
    curves = [], []
    for _ in range(100):
        feeds = {"x": x, "target": y, "lr": np.float32(0.01)}
        a, b = ref.run({**feeds, **s_ref}), got.run({**feeds, **s_got})
        s_ref = {k: a[f"{k}.next"] for k in s_ref}   # float64 throughout (wide_floats)
        s_got = {k: b[f"{k}.next"] for k in s_got}
        curves[0].append(float(a["loss"]))
        curves[1].append(float(b["loss"]))
    ref_curve, curve = map(np.array, curves)
    assert curve[-5:].mean() < 0.5 * curve[:5].mean(), curve
    np.testing.assert_allclose(curve, ref_curve, rtol=2e-4, atol=1e-6)
    assert s_got["step"] == s_ref["step"] == 100
    for k in sorted(set(s_ref) - {"step"}):
        err = np.linalg.norm(s_got[k] - s_ref[k]) / np.linalg.norm(s_ref[k])
        assert err < 1e-4, f"{k} after 100 steps: relative error {err:.2e}"


# ------------------------------------------------------------------ errors and contract
def test_float64_is_a_clear_compile_error():
    g = lc.Graph("f64")
    g.output(g.relu(g.input("x", ["N", 3], "float64")))
    for target in ("cuda-cpu", "cuda"):
        with pytest.raises(lc.CompileError, match="'x' is float64.*float32"):
            lc.compile(g, target)


def test_cuda_error_names_the_entry_point():
    """A GEMM launch the kernel library refuses comes back from the generated host code as a
    cudaError_t and from Python as a CudaError. Only a batch past the GEMM's int range gets
    refused, and run() stops that one at feed time, so the entry point is called directly
    (the refused launch touches no memory)."""
    g = lc.Graph("huge")
    g.output(g.linear(g.input("x", ["N", 1]), 1, name="fc"))
    exe = lc.compile(g, "cuda-cpu")
    with pytest.raises(cuda.CudaError, match=r"model_forward \(graph 'huge'\) failed: "
                                              r"invalid argument"):
        exe._call(2**31 + 5, [0, 0], 0, 0, lambda c: cuda.EMU_ERRORS[c])


@pytest.mark.skipif(GPU, reason="a GPU is present: target 'cuda' runs in every test")
def test_cuda_target_compiles_without_a_gpu_and_run_says_so():
    if find_nvcc() is None:
        pytest.skip("nvcc not found")
    t = lc.training_graph(mlp((6, 5, 3)), optimizer=lc.SGD(0.1))
    exe = lc.compile(t, "cuda")
    assert exe.path.is_file() and "nvcc -O3 -std=c++17 -arch=sm_90" in exe.source()
    assert not cuda.gpu_available()
    with pytest.raises(lc.LincompileError, match="model_train_step: no CUDA device found"):
        exe.run(lc.random_feeds(t, 4))


@pytest.mark.skipif(not GPU, reason="needs a GPU")
def test_torch_tensors_on_the_gpu_are_used_in_place():
    torch = pytest.importorskip("torch")
    t = lc.training_graph(mlp((6, 5, 3)), optimizer=lc.SGD(0.1, momentum=0.9))
    exe = lc.compile(t, "cuda")
    feeds = lc.random_feeds(t, 9)
    want = exe.run(feeds)
    dev = {k: torch.from_numpy(np.array(v)).cuda() for k, v in feeds.items()}
    got = exe.run(dev)
    torch.cuda.synchronize()
    for k, v in want.items():
        assert got[k].is_cuda and np.array_equal(got[k].cpu().numpy(), v), k
    bound = exe.bind(dev)   # X.next is X: calling it again trains on
    bound()
    torch.cuda.synchronize()
    assert np.array_equal(dev["fc1.weight"].cpu().numpy(), want["fc1.weight.next"])


def test_user_names_stay_in_comments():
    g = lc.Graph("evil */ #include <x> ??/", seed=0)
    x = g.input("in */ put\n", ["N", 3])
    g.output(g.tanh(g.linear(x, 2, name="fc*/ x")), name="out\\ */")
    exe = lc.compile(g, "cuda-cpu")
    check(exe, g, 3)
    code = re.sub(r"/\*.*?\*/", "", exe.source(), flags=re.S)
    assert "evil" not in code and "put" not in code and "fc*" not in code


# ------------------------------------------------------------------ files, CLI, script
def test_written_sources_build_with_make_cpu_and_run(tmp_path):
    if shutil.which("make") is None or shutil.which("g++") is None:
        pytest.skip("needs make and g++")
    m = mlp((6, 5, 3), seed=2, name="tiny")
    lc.save_onnx(m, tmp_path / "tiny.onnx")
    r = subprocess.run([sys.executable, "-m", "lincompile", "compile", tmp_path / "tiny.onnx",
                        "--target", "cuda", "-o", tmp_path / "out", "--train", "--loss",
                        "cross-entropy", "--optimizer", "sgd", "--lr", "0.1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.cu", "model.h", "Makefile", "cuda_cpu.h"}
    head = (out / "model.cu").read_text().splitlines()[2]
    assert "nvcc -O3 -std=c++17 -arch=sm_90 -Xcompiler -fPIC -shared model.cu" in head
    build_ = subprocess.run(["make", "-C", str(out), "cpu"], capture_output=True, text=True)
    assert build_.returncode == 0, build_.stderr
    lib = ctypes.CDLL(str(out / "libmodel_cpu.so"))
    lib.model_workspace_size.restype = ctypes.c_size_t
    n = 7
    x = np.random.default_rng(0).standard_normal((n, 6)).astype(np.float32)
    params = [m.params[k].data for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]
    y = np.full((n, 3), np.nan, np.float32)
    ws = np.zeros(lib.model_workspace_size(ctypes.c_long(n)) + 256, np.uint8)
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)
    rc = lib.model_forward(ctypes.c_long(n), p(x), *map(p, params), p(y), p(ws), None)
    assert rc == 0
    want = lc.compile(m, "reference", dtype="float64").run({"x": x})["fc2"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_validate_cli_runs_the_cpu_emulation(tmp_path):
    lc.save_onnx(lc.training_graph(mlp((6, 5, 3)), optimizer=lc.Adam()), tmp_path / "t.onnx")
    r = subprocess.run([sys.executable, "-m", "lincompile", "validate", tmp_path / "t.onnx",
                        "--targets", "cuda-cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^cuda-cpu\s+loss\s.*ok$", r.stdout, re.M)


def test_gpu_check_script_parses_and_its_benchmark_dry_runs(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cuda.py"),
                        "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("ratio = torch time / lincompile time"), r.stdout
    assert sum("train step" in ln or "4096x4096x4096" in ln for ln in lines) == 5
    assert (tmp_path / "bench_cuda.json").is_file()
