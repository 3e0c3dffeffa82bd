"""The C backend against independent oracles: the float64 numpy reference, onnxruntime,
and a C compiler's sanitizers. (Per-op and training tests of every backend, C included,
live in test_ops.py, test_training.py and test_torch_parity.py.)"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from c_helpers import build_driver, run_driver, train_with_library
from helpers import SANITIZE, mlp, sanitizer_missing

import lincompile as lc
from lincompile.backends.c import CExecutable, write_c_sources
from lincompile.backends.reference import ReferenceExecutable
from lincompile.validate import compare

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="no C compiler")
BATCHES = (1, 3, 17, 64, 130)   # not multiples of the GEMM tiles (6 × 64)
ROOT = Path(__file__).resolve().parent.parent


def check(exe: lc.Executable, graph: lc.Graph, batch: int, seed: int = 0, **fixed) -> dict:
    """Run random feeds through ``exe``; every output within DESIGN §6's bound of float64."""
    feeds = {**lc.random_feeds(graph, batch, seed), **fixed}
    ref = ReferenceExecutable(graph, "float64").run(feeds)
    got = exe.run(feeds, poison=True)   # an output the code forgot stays NaN
    rows = [compare("c", k, got.get(k), r) for k, r in ref.items()]
    bad = [r for r in rows if not r.ok]
    assert not bad, f"{graph.name} at batch {batch}: {bad}"
    return got


def ops_graph(dtype: str = "float32") -> lc.Graph:
    """Every op the IR has outside losses/optimizers, with broadcasting, views and
    outputs that are inputs or repeated; its gradient graph adds the rest."""
    g = lc.Graph("ops", seed=1)
    x = g.input("x", ["N", 2, 5], dtype)
    s = g.input("s", [7], dtype)   # rank-1 broadcast (scalars: test_ops.py)
    h = g.flatten(x)                                                   # [N, 10]
    h = g.add(g.linear(h, 7, name="fc1"), g.input("row", [1, 7], dtype))
    h = g.mul(g.sigmoid(h), s)
    h = g.tanh(g.matmul(h, g.input("w2", [7, 6], dtype)))              # nn
    t = g.matmul(g.input("a", [6, "N"], dtype), g.input("b", [3, 6], dtype),
                 trans_a=True, trans_b=True)                           # tt: [N, 3]
    h = g.reshape(g.relu(g.linear(h, 3, bias=False, name="fc2")), [-1, 3])
    h = g.add(h, g.broadcast_to(g.reduce_sum(t, axes=[1], keepdims=True), t))
    g.output(g.reduce_sum(g.mul(h, h), axes=[0]), name="y")
    return g.verify()


def ops_objective(dtype: str = "float32") -> lc.Graph:
    g = ops_graph(dtype)
    y = g.outputs[0]
    r = g.input("r", y.shape, dtype)
    g.outputs = [g.output(g.reduce_sum(g.mul(y, r)), name="L")]
    wrt = [v.name for v in g.inputs if v.name != "r"] + ["fc1.weight", "fc1.bias"]
    gg = lc.grad(g, of="L", wrt=wrt)
    gg.outputs += [gg.values["x"], gg.values["L"]]   # an input and a repeat as outputs
    return gg


# --------------------------------------------------------------------------- forward/grad
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_op_forward_and_gradient_at_odd_batches(dtype):
    for g in (ops_graph(dtype), ops_objective(dtype)):
        exe = lc.compile(g, "c")
        for b in BATCHES:
            check(exe, g, b, seed=b)


def test_elementwise_steps_write_over_inputs_read_for_the_last_time():
    """An elementwise step's output takes the workspace slot of a same-shape input it reads
    last (relu_grad over dy, gelu over a sum, ...), never one of another shape (a broadcast)
    or one still read later; the results stay those of float64."""
    g = lc.Graph("chain", seed=3)
    x = g.input("x", ["N", 12])
    h = g.gelu(g.linear(x, 9, name="fc1"))
    s = g.silu(h)
    b = g.add(s, g.input("row", [9]))                   # broadcast: a slot of its own
    h = g.relu(g.mul(b, g.leaky_relu(b)))               # relu writes over the product
    g.output(g.linear(h, 4, name="fc2"))
    t = lc.training_graph(g, loss="mse", optimizer=lc.SGD(0.1))
    exe = lc.compile(t, "c")
    where = exe.plan.where
    shared = [(s.node.op, v.name) for s in exe.entry.steps if s.elementwise
              for v in s.inputs if where[v.name].kind == "slot"
              and where[v.name] == where[s.outputs[0].name]]
    assert len(shared) >= 4, shared   # forward activations and their gradients
    assert where[b.name] != where[s.name]
    for b in BATCHES:
        check(exe, t, b, seed=b)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_fused_epilogue_and_gradients_at_tile_edges(act):
    m = mlp((70, 130, 10), act=act, seed=2)
    src = lc.compile(m, "c").source()
    assert f"{act} '{act}' fused into the epilogue" in src
    t = lc.training_graph(m, loss="mse", optimizer=None)
    for graph in (m, t):
        exe = lc.compile(graph, "c")
        for b in BATCHES:
            check(exe, graph, b, seed=b)


OPTIMIZERS = {"sgd": lc.SGD(0.1), "sgd-wd": lc.SGD(0.1, weight_decay=1e-2),
              "sgd-momentum-wd": lc.SGD(0.05, 0.9, 1e-2),
              "adam-l2": lc.Adam(0.01, weight_decay=1e-2), "adamw": lc.AdamW(0.01)}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_training_step_every_loss_and_optimizer(loss, opt):
    # without P.grad outputs, a plain SGD update (no momentum) may take dW in; sgd-wd is
    # here so that a fusion that dropped the weight decay fails
    plain = opt in ("sgd", "sgd-wd")
    t = lc.training_graph(mlp((9, 20, 4), seed=3), loss=loss, optimizer=OPTIMIZERS[opt],
                          emit_grads=not plain)
    exe = lc.compile(t, "c")
    fused = "(matmul) fused in" in exe.source()
    assert fused if opt == "sgd" else (plain or not fused)
    for b in BATCHES:
        check(exe, t, b, seed=b)


def test_training_step_matches_onnxruntime_on_the_exported_graph():
    t = lc.training_graph(mlp((12, 16, 5), seed=4), optimizer=lc.Adam(0.01))
    report = lc.validate(t, ["onnx", "c"], batch=17)
    assert report.ok, str(report)


def test_threads_2_is_bitwise_identical_to_1():
    t = lc.training_graph(mlp((200, 160, 10), seed=5), optimizer=lc.SGD(0.1, momentum=0.9))
    feeds = lc.random_feeds(t, 130, seed=1)
    one = lc.compile(t, "c").run(feeds)
    two = lc.compile(t, "c", threads=2).run(feeds)
    assert "-fopenmp" in lc.compile(t, "c", threads=2).source().splitlines()[2]
    for k in one:
        assert np.array_equal(one[k], two[k]), k


def test_bound_in_place_training_equals_run():
    t = lc.training_graph(mlp((9, 20, 4), seed=3), optimizer=lc.AdamW(0.01))
    exe = lc.compile(t, "c")
    feeds = {**lc.random_feeds(t, 33, seed=2), **t.initial_state, "lr": np.float32(0.01)}
    bound = exe.bind(feeds)
    state = dict(t.initial_state)
    for _ in range(3):
        out = exe.run({**feeds, **state})
        state = {k: out[f"{k}.next"] for k in state}
        bound()
    for k in state:   # the bound inputs were updated in place
        assert np.array_equal(bound.inputs[k], state[k]), k
    assert bound.outputs["fc1.weight.next"] is bound.inputs["fc1.weight"]


# --------------------------------------------------------------------------- run()
def mlp_step(batch: int = 17, seed: int = 0):
    t = lc.training_graph(mlp((12, 16, 5), seed=seed), optimizer=lc.SGD(0.1))
    feeds = {**lc.random_feeds(t, batch, seed=seed), **t.initial_state,
             "lr": np.float32(0.1)}
    return t, lc.compile(t, "c", threads=1), feeds


def test_run_returns_arrays_of_its_own_every_call():
    _, exe, feeds = mlp_step()
    first = exe.run(feeds)
    kept = {k: v.copy() for k, v in first.items()}
    view = exe.run(feeds)["fc1.weight.next"][:2]   # the dict goes, a view of one stays
    view_copy = view.copy()
    for _ in range(4):
        again = exe.run(feeds)
        for k, v in again.items():
            assert not np.shares_memory(v, view), k
            for w in first.values():
                assert not np.shares_memory(v, w), k
    for k, v in first.items():   # nothing handed out earlier was written again
        assert np.array_equal(v, kept[k]), k
    assert np.array_equal(view, view_copy)
    assert all(np.array_equal(again[k], kept[k]) for k in kept)   # same feeds, same result


def test_run_hands_out_a_buffer_again_only_once_dropped():
    _, exe, feeds = mlp_step()
    addresses = lambda out: {v.ctypes.data for v in out.values() if v.size}
    seen = addresses(exe.run(feeds))   # dropped at once: its buffers may come back
    out = exe.run(feeds)
    assert addresses(out) & seen, "dropped output buffers are used again"
    assert all(a % 64 == 0 for a in addresses(out)), "outputs start on a cache line"
    held = addresses(out)
    assert not addresses(exe.run(feeds)) & held, "a held output was handed out again"


def test_run_equals_bind_and_poison_changes_nothing():
    _, exe, feeds = mlp_step(batch=33, seed=2)
    want = exe.bind(feeds, inplace=False)
    want()
    bound = exe.bind(feeds)   # in place: one step from the same state
    bound()
    for got in (exe.run(feeds), exe.run(feeds, poison=True), exe.run(feeds)):
        for k, v in got.items():
            assert np.array_equal(v, want.outputs[k]), k
            assert np.array_equal(v, bound.outputs[k]), k


def test_run_keeps_every_check_after_a_fast_call():
    _, exe, feeds = mlp_step()
    want = exe.run(feeds)
    same = lambda out: all(np.array_equal(out[k], want[k]) for k in want)
    for lr in (0.1, np.float32(0.1), np.array(0.1, np.float32)):   # each way of a scalar
        assert same(exe.run({**feeds, "lr": lr}))
    assert same(exe.run({**feeds, "x": np.asfortranarray(feeds["x"])}))   # copied, then fast
    bad = {"x": feeds["x"].astype(np.float64), "target": feeds["target"][:5],
           "lr": np.array(0.1)}
    for name, value in bad.items():
        with pytest.raises(lc.FeedError, match=name):
            exe.run({**feeds, name: value})
    with pytest.raises(lc.FeedError, match="missing"):
        exe.run({k: v for k, v in feeds.items() if k != "lr"})
    with pytest.raises(lc.FeedError, match="unknown"):
        exe.run({**feeds, "lr2": np.float32(1)})
    for label in (5, -1):
        target = feeds["target"].copy()
        target[3] = label
        with pytest.raises(lc.FeedError, match="labels outside"):
            exe.run({**feeds, "target": target})
    assert same(exe.run(feeds))


def test_run_checks_labels_of_a_loss_it_does_not_output():
    g = lc.Graph("scaled", seed=0)
    z, y = g.input("z", ["N", 3]), g.input("y", ["N"], "int64")
    g.output(g.mul(g.softmax_cross_entropy(z, y), g.const(np.float32(2))), name="twice")
    exe = lc.compile(g, "c", threads=1)
    feeds = lc.random_feeds(g, 4)
    want = exe.run(feeds)["twice"]
    assert np.array_equal(exe.run(feeds)["twice"], want)
    with pytest.raises(lc.FeedError, match="labels outside"):
        exe.run({**feeds, "y": np.array([0, 1, 3, 0])})


def test_run_switches_batch_sizes():
    t, exe, _ = mlp_step()
    feeds = {n: {**lc.random_feeds(t, n, seed=n), **t.initial_state} for n in (3, 64, 3, 1)}
    for n, f in feeds.items():
        ref = ReferenceExecutable(t, "float64").run(f)
        got = exe.run(f)
        assert got["fc1.weight.next"].shape == (16, 12)
        assert all(compare("c", k, got[k], r).ok for k, r in ref.items()), n


def test_default_threads_follow_the_affinity():
    from lincompile.backends.c import default_threads

    want = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads() == want
    t = lc.training_graph(mlp((200, 160, 10), seed=5), optimizer=lc.SGD(0.1))
    feeds = lc.random_feeds(t, 130, seed=1)
    default, one = lc.compile(t, "c"), lc.compile(t, "c", threads=1)
    assert f"#define LC_THREADS {want} " in default.source()
    a, b = default.run(feeds), one.run(feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- safety
NASTY = 'a"b\\c */ d /* e\n#include <stdio.h>\n??/ f ??= \u00e9\t\u2603'


def test_hostile_names_compile_and_behave():
    g = lc.Graph(NASTY, seed=6)
    x = g.input(NASTY + "x", ["N", 4])
    h = g.relu(g.linear(x, 5, name=NASTY + "fc"), name="*/ relu \\")
    g.output(g.linear(h, 3, name="??/\nfc2"), name='"out"\n#define X */')
    g.meta["lincompile.note"] = NASTY
    exe = lc.compile(g, "c")
    check(exe, g, 3)
    t = lc.training_graph(g, optimizer=lc.SGD(0.1, momentum=0.5))
    check(lc.compile(t, "c"), t, 5)
    for text in (exe.source(), (exe.path.parent / "model.h").read_text()):
        assert "??" not in text   # no trigraph survives
        assert not any(ln.lstrip().startswith(("#include <stdio", "#define X"))
                       for ln in text.splitlines())   # names stay inside comments


@pytest.mark.parametrize("prefix", ["1x", "a b", "for", "x;y", "", "__x", "lc_x"])
def test_bad_prefix_is_a_compile_error(prefix):
    with pytest.raises(lc.CompileError, match="prefix"):
        lc.compile(mlp((3, 2)), "c", prefix=prefix)


def test_feeds_wrong_shape_noncontiguous_readonly():
    m = mlp((6, 5, 3), seed=7)
    exe = lc.compile(m, "c")
    x = np.random.default_rng(0).standard_normal((9, 12)).astype(np.float32)
    with pytest.raises(lc.FeedError, match="shape"):
        exe.run({"x": x})
    with pytest.raises(lc.FeedError, match="dtype"):
        exe.run({"x": x[:, :6].astype(np.float64)})
    want = ReferenceExecutable(m).run({"x": np.ascontiguousarray(x[:, ::2])})["fc2"]
    strided = x[:, ::2]
    fortran = np.asfortranarray(x[:, ::2])
    readonly = np.ascontiguousarray(x[:, ::2])
    readonly.flags.writeable = False
    for feed in (strided, fortran, readonly):
        got = exe.run({"x": feed})["fc2"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(x, x.copy())


def test_generated_c_is_warning_free_and_documented(tmp_path):
    m = mlp((6, 5, 3), act="tanh")
    graphs = {"forward": m,
              "train_step": lc.training_graph(m, loss="mse", optimizer=lc.Adam(0.01))}
    write_c_sources(graphs, tmp_path, prefix="net", threads=2)
    write_c_sources({"forward": ops_objective("float64")}, tmp_path / "f64")
    for d in (tmp_path, tmp_path / "f64"):
        res = subprocess.run(["cc", "-std=c99", "-O2", "-march=native", "-Wall", "-Wextra",
                              "-pedantic", "-Werror", "-fopenmp", "-c", "model.c"], cwd=d,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    h = (tmp_path / "model.h").read_text()
    assert "cc -O3 -march=native -std=c99 -fopenmp -fPIC -shared model.c" in h
    assert "fc1.weight.m.next   float32[5, 6]" in h and "void net_train_step(long N" in h
    assert "size_t net_workspace_size(long N);" in h and "net_train_step_init(" in h
    c = (tmp_path / "model.c").read_text()
    assert "/* node 'fc1.weight.grad' (matmul) -> 'fc1.weight.grad' */" in c
    # forward reads the trained weights (inputs), the training step starts from the model's
    assert "in1   fc1.weight" in h.split("net_train_step")[0]
    # and what was built runs: 3 Adam steps from net_train_step_init's state, 2 threads
    subprocess.run(["cc", "-std=c99", "-O2", "-fopenmp", "-fPIC", "-shared", "model.c", "-o",
                    "libnet.so", "-lm"], cwd=tmp_path, check=True, capture_output=True)
    lib = ctypes.CDLL(str(tmp_path / "libnet.so"))
    rng = np.random.default_rng(2)
    batches = [{"x": rng.standard_normal((b, 6)).astype(np.float32),
                "target": rng.standard_normal((b, 3)).astype(np.float32),
                "lr": np.float32(0.01)} for b in (5, 70, 1)]
    t = graphs["train_step"]
    for i, (got, ref) in enumerate(train_with_library(lib, "train_step", t, batches, "net")):
        bad = [r for r in (compare("c", k, got[k], v) for k, v in ref.items()) if not r.ok]
        assert not bad, f"net_train_step, step {i}: {bad}"


# --------------------------------------------------------------------------- sanitizers
@pytest.mark.skipif(sys.platform != "linux", reason="ASan/UBSan runs are set up for Linux")
def test_address_and_undefined_sanitizers_clean(tmp_path):
    flags = ["-std=c99", "-O1", "-g", "-march=native", *SANITIZE]
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    why = sanitizer_missing(tmp_path, env)
    if why:   # only a missing runtime skips: a build failure of the generated code fails
        pytest.skip(f"no sanitizer runtime here: {why}")
    for k, opt in enumerate([lc.Adam(0.01), lc.SGD(0.1)]):   # SGD: dW fused into P.next
        t = lc.training_graph(mlp((13, 70, 5), seed=8), optimizer=opt)
        d = tmp_path / str(k)
        d.mkdir()
        try:
            exe, _, inplace = build_driver(t, d, flags)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"the generated code does not build with sanitizers: {e.stderr[:2000]}")
        assert inplace, "optimizer state should be updatable in place"
        for n in (1, 7, 64, 130):
            feeds = lc.random_feeds(t, n, seed=n)
            ref = ReferenceExecutable(t, "float64").run(feeds)
            for mode in (False, True):
                got, res = run_driver(exe, t, feeds, mode, d, env)
                assert res.returncode == 0 and "runtime error" not in res.stderr, res.stderr
                bad = [r for r in (compare("c", k, got[k], v) for k, v in ref.items())
                       if not r.ok]
                assert not bad, f"{opt}, batch {n}, in place {mode}: {bad}"


# --------------------------------------------------------------------------- build cache
def test_cache_hit_in_a_fresh_process_is_fast(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from helpers import mlp
        import lincompile as lc
        t = lc.training_graph(mlp((20, 16, 4)), optimizer=lc.SGD(0.1, momentum=0.9))
        t0 = time.perf_counter()
        exe = lc.compile(t, "c")
        print(time.perf_counter() - t0, exe.path)
    """)
    env = {**os.environ, "LINCOMPILE_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0][1] == runs[1][1]   # the same content-addressed library
    # a hit is no build: a small fraction of the first (building) run, whatever the load
    build_s, hit_s = float(runs[0][0]), float(runs[1][0])
    assert hit_s < build_s / 4, f"cache hit {hit_s * 1e3:.0f} ms, build {build_s * 1e3:.0f} ms"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_concurrent_builds_never_see_a_partial_library(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("LINCOMPILE_CACHE", str(tmp_path))
    g = lc.Graph("c"); x = g.input("x", ["N", 3]); g.output(g.tanh(x))  # noqa: E702
    with ThreadPoolExecutor(4) as pool:
        exes = list(pool.map(lambda _: lc.compile(g, "c"), range(4)))
    assert len({e.path for e in exes}) == 1
    for e in exes:
        check(e, g, 5)


def test_compiler_failure_is_a_compile_error_with_message_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LINCOMPILE_CACHE", str(tmp_path))
    with pytest.raises(lc.CompileError) as info:
        lc.compile(mlp((3, 2)), "c", cflags=["-O2", "-fno-such-flag-lincompile"])
    msg = str(info.value)
    assert "-fno-such-flag-lincompile" in msg and "model.c" in msg
    path = Path(msg.split(" failed on ")[1].split(" (exit")[0])
    assert path.is_file() and "model_forward" in path.read_text()


# --------------------------------------------------------------------------- example
def test_example_c_train_builds_with_make_and_learns(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    ex = tmp_path / "c_train"
    shutil.copytree(ROOT / "examples" / "c_train", ex,
                    ignore=shutil.ignore_patterns("build", "*.o", "train", "*.bin"))
    res = subprocess.run(["make", f"PYTHON={sys.executable}"], cwd=ex, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    last = [ln for ln in res.stdout.splitlines() if "test accuracy" in ln][-1]
    acc = float(last.split("test accuracy")[1].split()[0])
    assert acc >= 0.9, res.stdout


def test_is_a_registered_target():
    assert "c" in lc.TARGETS
    assert isinstance(lc.compile(mlp((3, 2)), "c"), CExecutable)
