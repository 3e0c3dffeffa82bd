"""Fuzzing: the ONNX importer on damaged models, and ``run()`` on odd feeds.

Property: lincompile either raises a :class:`lincompile.LincompileError` subclass or gives
the right answer (onnxruntime's, for an imported model it also runs; the float64 reference,
for feeds), never another exception, a crash or a hang (each example has a time bound).

Profiles: by default a fixed-seed, derandomized run of a few hundred examples per test (the
whole file in well under a minute, as in CI). A longer random search, by hand (a new seed
each run; 20 times the examples, or as many as given)::

    LINCOMPILE_FUZZ=long python -m pytest tests/test_fuzz.py -q
    LINCOMPILE_FUZZ=50000 python -m pytest tests/test_fuzz.py -q -k mutated

A failure prints the shrunk example; add it to the regression tests at the end of this file.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import threading
import warnings

import numpy as np
import onnx
import pytest
from conftest import TARGETS
from helpers import mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_models import I64, model

import lincompile as lc
from lincompile.backends.onnx import to_onnx
from lincompile.backends.reference import ReferenceExecutable

# ------------------------------------------------------------------ profiles
_MODE = os.environ.get("LINCOMPILE_FUZZ", "ci")


def fuzz(ci_examples: int):
    """The settings of one fuzz test: ``ci_examples`` derandomized examples by default,
    a random search of 20 times as many (or ``LINCOMPILE_FUZZ`` examples) by hand."""
    n = {"ci": ci_examples, "long": 20 * ci_examples}.get(_MODE) or int(_MODE)
    return settings(max_examples=n, derandomize=_MODE == "ci", deadline=None, database=None,
                    print_blob=True, suppress_health_check=list(HealthCheck))
#: seconds one example may take (an import and a run, or a few runs of small graphs)
TIME_BOUND = 10.0
#: run at most this many feed elements through an imported model (huge dims are refused
#: by lincompile or not run, never allocated)
MAX_ELEMS = 1 << 16
CPU_TARGETS = [t for t in TARGETS if t != "cuda"]


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: float = TIME_BOUND):
    """Fail (not hang) an example that runs longer than ``seconds`` (main thread only)."""
    def fire(*_):
        raise Hang(f"example took more than {seconds} s")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ seed models
F64 = TensorProto.DOUBLE
RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _seed_models() -> dict[str, bytes]:
    """Valid models that together use every op and form the importer reads."""
    out = {}
    n = helper.make_node
    out["gemm"] = model(
        [n("Flatten", ["x"], ["f"]), n("Gemm", ["f", "W1", "b1"], ["h"], name="/fc1/Gemm",
                                       transB=1),
         n("Relu", ["h"], ["r"]), n("Gemm", ["r", "W2", "b2"], ["y"], alpha=0.5, beta=2.0)],
        [("x", ["N", 2, 3])], [("y", ["N", 4])],
        {"W1": _rand(5, 6), "b1": _rand(5), "W2": _rand(5, 4), "b2": _rand(1, 4)})
    out["matmul"] = model(
        [n("MatMul", ["x", "onnx::MatMul_7"], ["h"], name="/enc/MatMul"),
         n("Add", ["h", "b"], ["a"]), n("Tanh", ["a"], ["t"]),
         n("Transpose", ["V"], ["Vt"], perm=[1, 0]), n("MatMul", ["t", "Vt"], ["u"]),
         n("Constant", [], ["half"], value_float=0.5), n("Mul", ["u", "half"], ["m"]),
         n("Sigmoid", ["m"], ["s"]), n("Sub", ["s", "u"], ["d"]),
         n("Reshape", ["d", "shape"], ["rs"]), n("ReduceSum", ["rs", "axes"], ["rsum"],
                                                 keepdims=0),
         n("Identity", ["rsum"], ["y"])],
        [("x", ["N", 3])], [("y", ["N"])],
        {"onnx::MatMul_7": _rand(3, 4), "b": _rand(4), "V": _rand(2, 4),
         "shape": np.array([-1, 2], np.int64), "axes": np.array([1], np.int64)})
    out["loss"] = model(
        [n("Gemm", ["x", "W", "b"], ["logits"], transB=1),
         n("SoftmaxCrossEntropyLoss", ["logits", "t"], ["loss"], reduction="mean")],
        [("x", ["N", 3]), ("t", ["N"], I64)], [("loss", [])], {"W": _rand(4, 3), "b": _rand(4)})
    out["f64"] = model(
        [n("Gemm", ["x", "W"], ["h"], transB=1), n("Relu", ["h"], ["y"])],
        [("x", ["N", 3], F64)], [("y", ["N", 2], F64)],
        {"W": RNG.standard_normal((2, 3))}, opset=11)
    for name, opt in (("sgd", lc.SGD(0.1, momentum=0.9, weight_decay=0.01)),
                      ("adam", lc.Adam(0.01))):   # lincompile's own files, with functions
        out[f"train-{name}"] = to_onnx(lc.training_graph(mlp((4, 3, 2), seed=1),
                                                         optimizer=opt, emit_grads=True))
    out["model"] = to_onnx(mlp((4, 3, 2), act="sigmoid", seed=2))
    return {k: m.SerializeToString() for k, m in out.items()}


SEEDS = _seed_models()


# ------------------------------------------------------------------ mutations of a model
ATTR_NAMES = ["axis", "axes", "perm", "transA", "transB", "alpha", "beta", "keepdims",
              "allowzero", "noop_with_empty_axes", "reduction", "ignore_index", "momentum",
              "weight_decay", "beta1", "value", "value_float", "value_ints", "bogus"]
ATTR_VALUES = st.one_of(
    st.integers(-3, 3), st.sampled_from([2**40, -2**40, 2**62]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.lists(st.integers(-3, 3), min_size=1, max_size=4),
    st.sampled_from([b"mean", b"sum", b"", b"\xff"]),
    st.builds(lambda a: numpy_helper.from_array(np.asarray(a, np.float32)),
              st.lists(st.floats(-2, 2, width=32), max_size=3)))

DIMS = st.one_of(st.integers(0, 5), st.sampled_from([2**31, 2**40, 2**62]), st.just("N"),
                 st.just("M"))
ELEM_TYPES = st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64,
                              TensorProto.INT32, TensorProto.FLOAT16, TensorProto.BOOL,
                              TensorProto.STRING, TensorProto.UNDEFINED])
OP_TYPES = st.sampled_from(["Gemm", "MatMul", "Add", "Sub", "Mul", "Relu", "Sigmoid", "Tanh",
                            "Flatten", "Reshape", "ReduceSum", "Identity", "Transpose",
                            "Constant", "SoftmaxCrossEntropyLoss", "Softmax", "SGDMomentum",
                            "Adam"])


def _names(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    out = [v.name for v in g.input] + [t.name for t in g.initializer]
    return out + [o for n in g.node for o in n.output if o]


def _set_dims(shape: onnx.TensorShapeProto, dims: list) -> None:
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


@st.composite
def mutated_model(draw) -> bytes:
    """A seed model with 1–4 structural mutations (or byte-level damage)."""
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    m = onnx.load_from_string(data)
    g = m.graph
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        kind = draw(st.sampled_from(MUTATIONS))
        kind(draw, m, g)
    data = m.SerializeToString()
    if draw(st.integers(0, 9)) == 0:   # byte-level damage of the serialized file
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            if not data:
                break
            i = draw(st.integers(0, len(data) - 1))
            how = draw(st.sampled_from(["flip", "cut", "dup", "zero"]))
            if how == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif how == "cut":
                del data[i:]
            elif how == "dup":
                data[i:i] = data[i:i + draw(st.integers(1, 16))]
            else:
                data[i] = 0
        data = bytes(data)
    return data


def _node(draw, g) -> onnx.NodeProto | None:
    return g.node[draw(st.integers(0, len(g.node) - 1))] if g.node else None


def m_remove_node(draw, m, g):
    if g.node:
        del g.node[draw(st.integers(0, len(g.node) - 1))]


def m_duplicate_node(draw, m, g):
    n = _node(draw, g)
    if n is not None:
        g.node.insert(draw(st.integers(0, len(g.node))), copy.deepcopy(n))


def m_shuffle_nodes(draw, m, g):
    nodes = list(g.node)
    order = draw(st.permutations(range(len(nodes))))
    new = [copy.deepcopy(nodes[i]) for i in order]
    del g.node[:]
    g.node.extend(new)


def m_op_type(draw, m, g):
    n = _node(draw, g)
    if n is not None:
        n.op_type = draw(OP_TYPES)


def m_domain(draw, m, g):
    n = _node(draw, g)
    if n is not None:
        n.domain = draw(st.sampled_from(["", "ai.onnx", "lincompile", "com.microsoft", "x"]))


def m_rewire(draw, m, g):
    """An input renamed to another tensor, a dangling name, or the node's own output."""
    n = _node(draw, g)
    if n is None or not n.input:
        return
    i = draw(st.integers(0, len(n.input) - 1))
    names = [*_names(m), "dangling", "", *list(n.output)]
    n.input[i] = draw(st.sampled_from(names))


def m_inputs_count(draw, m, g):
    n = _node(draw, g)
    if n is None:
        return
    if n.input and draw(st.booleans()):
        del n.input[draw(st.integers(0, len(n.input) - 1))]
    else:
        n.input.append(draw(st.sampled_from([*_names(m), "dangling", ""])))


def m_outputs(draw, m, g):
    n = _node(draw, g)
    if n is None:
        return
    how = draw(st.sampled_from(["drop", "extra", "rename", "clash"]))
    if how == "drop" and n.output:
        del n.output[-1]
    elif how == "extra":
        n.output.append(draw(st.sampled_from(["extra", ""])))
    elif how == "rename" and n.output:
        n.output[0] = "renamed"
    elif n.output:
        n.output[0] = draw(st.sampled_from(_names(m)))


def m_attribute(draw, m, g):
    n = _node(draw, g)
    if n is None:
        return
    how = draw(st.sampled_from(["remove", "add", "retype"]))
    if how == "remove" and n.attribute:
        del n.attribute[draw(st.integers(0, len(n.attribute) - 1))]
        return
    name = (n.attribute[draw(st.integers(0, len(n.attribute) - 1))].name
            if how == "retype" and n.attribute else draw(st.sampled_from(ATTR_NAMES)))
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            break
    n.attribute.append(helper.make_attribute(name, draw(ATTR_VALUES)))


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(t)
    except Exception:
        return None


def m_initializer(draw, m, g):
    if not g.initializer:
        return
    t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
    how = draw(st.sampled_from(["dims", "dtype", "truncate", "special", "empty", "rename",
                                "drop"]))
    if how == "dims":
        del t.dims[:]
        t.dims.extend(draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 2**31, 2**40, -1]),
                                    max_size=3)))
    elif how == "dtype":
        t.data_type = draw(ELEM_TYPES)
    elif how in ("truncate", "special", "empty") and _array(t) is None:
        return   # damaged by an earlier mutation already
    elif how == "truncate":
        a = _array(t)
        raw = a.tobytes()
        t.ClearField("float_data"), t.ClearField("int64_data"), t.ClearField("double_data")
        t.raw_data = raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif how == "special":
        a = _array(t).copy()
        if a.dtype.kind == "f" and a.size:
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
        elif a.size:
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([-1, 0, 2**40, -2**62, 7]))
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    elif how == "empty":
        t.CopyFrom(numpy_helper.from_array(np.zeros((0,), _array(t).dtype),
                                           t.name))
    elif how == "rename":
        t.name = draw(st.sampled_from([*_names(m), "renamed"]))
    else:
        g.initializer.remove(t)


def m_value_info(draw, m, g):
    """A graph input or output with another dtype, rank, dims or no shape."""
    vis = list(g.input) + list(g.output)
    if not vis:
        return
    vi = vis[draw(st.integers(0, len(vis) - 1))]
    tt = vi.type.tensor_type
    how = draw(st.sampled_from(["dtype", "dims", "noshape", "rename", "drop", "dup"]))
    if how == "dtype":
        tt.elem_type = draw(ELEM_TYPES)
    elif how == "dims":
        _set_dims(tt.shape, draw(st.lists(DIMS, max_size=4)))
    elif how == "noshape":
        tt.ClearField("shape")
    elif how == "rename":
        vi.name = draw(st.sampled_from([*_names(m), "renamed", ""]))
    elif how == "drop":
        (g.input if vi in g.input else g.output).remove(vi)
    else:
        (g.input if vi in g.input else g.output).append(copy.deepcopy(vi))


def m_model(draw, m, g):
    """Model-level fields: opsets, producer, lincompile metadata, functions."""
    how = draw(st.sampled_from(["opset", "producer", "role", "functions", "ir"]))
    if how == "opset":
        m.opset_import[0].version = draw(st.sampled_from([1, 6, 9, 11, 13, 18, 21, 99]))
    elif how == "producer":
        m.producer_name = draw(st.sampled_from(["lincompile", "pytorch", ""]))
    elif how == "role":
        helper.set_model_props(m, {"lincompile.role": draw(st.sampled_from(
            ["training", "model", ""])), "lincompile.lr": draw(st.sampled_from(
                ["0.1", "nan", "x"]))})
    elif how == "functions" and m.functions:
        del m.functions[draw(st.integers(0, len(m.functions) - 1))]
    elif how == "ir":
        m.ir_version = draw(st.sampled_from([3, 7, 9, 10, 99]))


def m_cycle(draw, m, g):
    """Two nodes each reading the other's output."""
    if len(g.node) >= 2:
        i, j = sorted(draw(st.lists(st.integers(0, len(g.node) - 1), min_size=2, max_size=2,
                                    unique=True)))
        a, b = g.node[i], g.node[j]
        if a.input and b.output:
            a.input[0] = b.output[0]


#: Weighted towards what passes onnx.checker (it rejects most damage to the node graph).
MUTATIONS = [m_remove_node, m_duplicate_node, m_shuffle_nodes, m_op_type, m_domain, m_rewire,
             m_inputs_count, m_outputs, m_model, m_cycle] + 3 * [
             m_attribute, m_initializer, m_value_info]


# ------------------------------------------------------------------ the importer
def _small_enough(g: lc.Graph, batch: int) -> bool:
    for v in g.inputs:
        size = 1
        for d in v.shape:
            size *= batch if isinstance(d, str) else d
        if size > MAX_ELEMS:
            return False
    return True


def _ort_outputs(data: bytes, feeds: dict) -> dict | None:
    """onnxruntime's outputs of the model itself, or None where it cannot run it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))
    except Exception:
        return None


def check_import(data: bytes) -> None:
    """Import ``data``; if accepted, the graph runs on the reference as onnxruntime does."""
    try:
        g = lc.load_onnx(data)
    except lc.LincompileError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(e)
        return
    assert isinstance(g, lc.Graph)
    g.verify()
    if not _small_enough(g, 3):
        return
    feeds = lc.random_feeds(g, batch=3, seed=0)
    try:
        got = ReferenceExecutable(g).run(feeds)
    except lc.LincompileError:
        return
    want = _ort_outputs(data, feeds)
    if want is None or any(a.size == 0 for a in feeds.values()):
        return   # (the mean of nothing: NaN in torch and lincompile, 0 in onnxruntime)
    for k, w in want.items():
        assert k in got, (k, list(got))
        assert_close(got[k], np.asarray(w), k)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """``got`` is ``want`` (both float32, from two engines) within float32 rounding; outputs
    near or past float32's range, or with NaN, are not compared (there the order of
    operations decides)."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.dtype.kind != "f" or not np.isfinite(want).all() or np.abs(want).max(initial=0) > 1e30:
        if want.dtype.kind != "f":
            assert np.array_equal(got, want), what
        return
    diff = np.linalg.norm(got.astype(np.float64) - want)
    assert diff <= 1e-4 * np.linalg.norm(want) + 1e-6, (what, got, want)

def test_seed_models_import_and_match_onnxruntime():
    for name, data in SEEDS.items():
        g = lc.load_onnx(data)
        feeds = lc.random_feeds(g, batch=3, seed=0)
        assert _ort_outputs(data, feeds) is not None, name
        check_import(data)


@fuzz(1000)
@given(data=mutated_model())
def test_importer_on_mutated_models(data):
    with time_bound(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_import(data)


# ------------------------------------------------------------------ run() feeds
def _feed_graphs() -> dict[str, lc.Graph]:
    m = mlp((5, 4, 3), seed=3)
    f64 = lc.Graph("f64", seed=4)
    f64.output(f64.tanh(f64.linear(f64.input("x", ["N", 5], "float64"), 3, name="fc")))
    return {
        "forward": m,
        "adam-ce": lc.training_graph(m, optimizer=lc.Adam(0.01), emit_grads=True),
        "sgd-mse": lc.training_graph(m, loss="mse", optimizer=lc.SGD(0.1, momentum=0.9)),
        "forward-f64": f64,
    }


FEED_GRAPHS = _feed_graphs()
_EXES: dict[tuple[str, str], lc.Executable | None] = {}


def executable(graph: str, target: str) -> lc.Executable | None:
    """The graph compiled for the target once per session (None: the target refuses it)."""
    if (graph, target) not in _EXES:
        try:
            _EXES[graph, target] = lc.compile(FEED_GRAPHS[graph], target)
        except lc.CompileError:   # cuda-cpu computes in float32 only
            _EXES[graph, target] = None
    return _EXES[graph, target]


DTYPES = ["float16", "float32", "float64", "int32", "int64", "uint8", "bool", "complex64",
          "object"]


@st.composite
def odd_feeds(draw) -> tuple[str, dict]:
    """Valid feeds of one graph with 0–3 things made odd (dtype, shape, layout, type...)."""
    name = draw(st.sampled_from(sorted(FEED_GRAPHS)))
    g = FEED_GRAPHS[name]
    batch = draw(st.integers(1, 5))
    feeds: dict = dict(lc.random_feeds(g, batch, seed=draw(st.integers(0, 3))))
    if "step" in feeds:
        feeds["step"] = np.array(draw(st.sampled_from([0, 1, 7, 10**6])), np.int64)
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        arrays = [k for k, a in feeds.items()
                  if isinstance(k, str) and isinstance(a, np.ndarray) and a.dtype != object]
        key = draw(st.sampled_from(arrays)) if arrays else None   # odd ones stay as they are
        how = draw(st.sampled_from(FEED_MUTATIONS))
        how(draw, feeds, key, g)
    return name, feeds


def f_dtype(draw, feeds, key, g):
    if key is not None:
        feeds[key] = np.asarray(feeds[key]).astype(draw(st.sampled_from(DTYPES)))


def f_shape(draw, feeds, key, g):
    if key is None:
        return
    a = np.asarray(feeds[key])
    how = draw(st.sampled_from(["add", "drop", "resize", "transpose", "scalar", "vector"]))
    if how == "add":
        feeds[key] = a[..., None] if draw(st.booleans()) else a[None]
    elif how == "drop" and a.ndim > 1:   # the last two dims merged
        feeds[key] = a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])
    elif how == "drop" and a.ndim == 1 and a.size:
        feeds[key] = a[0]
    elif how == "resize" and a.ndim:
        ax = draw(st.integers(0, a.ndim - 1))
        n = draw(st.sampled_from([1, 2, 6, 7]))
        feeds[key] = np.resize(a, (*a.shape[:ax], n, *a.shape[ax + 1:])).astype(a.dtype)
    elif how == "transpose":
        feeds[key] = a.T
    elif how == "scalar" and a.size:
        feeds[key] = a.reshape(-1)[0]
    elif how == "vector":
        feeds[key] = a.reshape(-1)


def f_layout(draw, feeds, key, g):
    """The same values in another memory layout (a result must not change)."""
    if key is None:
        return
    a = np.asarray(feeds[key])
    how = draw(st.sampled_from(["strided", "fortran", "reversed", "readonly", "broadcast",
                                "unaligned"]))
    if how == "strided":
        big = np.repeat(a, 2, axis=-1) if a.ndim else a
        feeds[key] = big[..., ::2] if a.ndim else big
    elif how == "fortran":
        feeds[key] = np.asfortranarray(a)
    elif how == "reversed" and a.ndim:
        feeds[key] = a[::-1].copy()[::-1]
    elif how == "readonly":
        a = a.copy()
        a.flags.writeable = False
        feeds[key] = a
    elif how == "broadcast" and a.ndim and a.size:
        feeds[key] = np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * a.ndim), a.shape)
    elif how == "unaligned" and a.size:
        buf = np.zeros(a.nbytes + 1, np.uint8)[1:]
        b = buf.view(a.dtype).reshape(a.shape)
        b[...] = a
        feeds[key] = b


def f_python(draw, feeds, key, g):
    """A Python scalar, a (nested) list, an object array, or something else entirely."""
    if key is None:
        return
    a = np.asarray(feeds[key])
    feeds[key] = draw(st.sampled_from([
        a.tolist(), a.astype(object), float(a.reshape(-1)[0]) if a.size else 0.0,
        int(a.reshape(-1)[0]) if a.size else 0, True, None, "x", b"\x00", [], [[]],
        {"a": 1}, [a, a]]))


def f_values(draw, feeds, key, g):
    """Odd values: labels out of range, a huge step, zeros, denormals, large numbers."""
    if key is None:
        return
    a = np.asarray(feeds[key])
    if a.dtype == np.int64:
        # a step < 0 (or 2**63 − 1, whose step.next overflows) is for check_feeds' own tests
        vals = [0, 3, 1000, 2**62] if key == "step" else [-1, -2**62, 2**62, 3, 4, 1000]
        b = a.copy()
        if b.size:
            b.reshape(-1)[draw(st.integers(0, b.size - 1))] = draw(st.sampled_from(vals))
        feeds[key] = b
    elif a.dtype.kind == "f":
        # NaN/Inf have a property test of their own; Adam's v stays well above 0, where
        # m / (√v + ε) would turn float32 rounding of a ~0 gradient into any result
        vals = [1.0, 1e3] if key.endswith(".v") else [0.0, -0.0, -1.0, 1e-45, 1e3]
        b = a.copy()
        if b.size:
            b.reshape(-1)[draw(st.integers(0, b.size - 1))] = draw(st.sampled_from(vals))
        feeds[key] = b


def f_names(draw, feeds, key, g):
    how = draw(st.sampled_from(["missing", "extra", "odd-key", "renamed"]))
    if how == "missing" and key is not None:
        del feeds[key]
    elif how == "extra":
        feeds[draw(st.sampled_from(["extra", "lr", "loss", "step", "x.next", ""]))] = \
            np.zeros(2, np.float32)
    elif how == "odd-key" and key is not None:
        feeds[draw(st.sampled_from([1, None, b"x", ("x",)]))] = feeds.pop(key)
    elif how == "renamed" and key is not None:
        feeds[key + " "] = feeds.pop(key)


def f_batch(draw, feeds, key, g):
    """Two inputs that disagree on the batch size."""
    for k in ("target", "x"):
        if k in feeds and np.ndim(feeds[k]):
            a = np.asarray(feeds[k])
            feeds[k] = np.concatenate([a, a[:1]])
            return


FEED_MUTATIONS = [f_dtype, f_shape, f_layout, f_layout, f_python, f_values, f_values,
                  f_names, f_batch]


def _canonical(g: lc.Graph, feeds: dict) -> dict | None:
    """The feeds as the arrays they stand for, or None if they cannot be that."""
    want = {v.name: v for v in g.inputs}
    if set(feeds) != set(want):
        return None
    out = {}
    for k, v in want.items():
        try:
            a = np.asarray(feeds[k])
        except ValueError:   # a ragged list
            return None
        if str(a.dtype) != v.dtype and not (
                v.shape == () and isinstance(feeds[k], (bool, int, float))):
            return None
        out[k] = np.array(a, dtype=v.dtype)
    return out


def same_result(got: np.ndarray, want: np.ndarray, what: str, rel: float) -> None:
    """``got`` equals ``want`` within ``rel`` (norm-wise), NaN and ±Inf in the same places."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.dtype.kind in "iu":
        assert np.array_equal(got, want), what
        return
    want32 = want.astype(got.dtype)   # where float32 overflows, the reference does too
    special = ~np.isfinite(want32)
    assert np.array_equal(np.isnan(got), np.isnan(want32)), (what, got, want)
    assert np.array_equal(got[special & ~np.isnan(got)], want32[special & ~np.isnan(got)]), \
        (what, got, want)
    g, w = got[~special].astype(np.float64), want[~special]
    err, norm = np.linalg.norm(g - w), np.linalg.norm(w)
    assert err <= rel * norm + 1e-6, f"{what}: ‖out − ref‖ = {err:.3g}, ‖ref‖ = {norm:.3g}"


def check_feeds_everywhere(name: str, feeds: dict) -> None:
    """Every CPU target refuses the feeds with a one-line LincompileError, or every target
    gives what it gives for the same values as plain C-contiguous arrays of the input's
    dtype (to rounding), and that is the float64 reference's result; no target changes a
    feed."""
    g = FEED_GRAPHS[name]
    before = {k: np.array(v, copy=True) for k, v in feeds.items()
              if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"}
    verdicts = {}
    for t in CPU_TARGETS:
        exe = executable(name, t)
        if exe is None:
            continue
        try:
            verdicts[t] = exe.run(feeds)
        except lc.LincompileError as e:
            assert str(e).strip() and "\n" not in str(e).strip(), (t, repr(e))
            verdicts[t] = None
    for k, v in before.items():
        assert np.array_equal(np.asarray(feeds[k]), v, equal_nan=True), f"feed '{k}' changed"
    refused = sorted(t for t, r in verdicts.items() if r is None)
    assert refused in ([], sorted(verdicts)), f"only {refused} refused the feeds"
    if refused:
        return
    canon = _canonical(g, feeds)
    assert canon is not None, "feeds that are not the graph's inputs were accepted"
    want = ReferenceExecutable(g, "float64").run(canon)
    for t, got in verdicts.items():
        plain = executable(name, t).run(canon)
        assert set(got) == set(want) == set(plain), t
        for k in want:
            # within ULPs, not bitwise: numpy's and cc's vector loops round by alignment
            same_result(got[k], plain[k], f"{t}: {k} depends on the feeds' layout or type",
                        rel=1e-6)
            # a loose bound: feeds like 1e3 or a zero second moment amplify float32 rounding
            same_result(got[k], want[k], f"{t}: {k}", rel=1e-3)


@fuzz(400)
@given(case=odd_feeds())
def test_run_on_odd_feeds(case):
    for t in CPU_TARGETS:   # builds (on a cold cache) are not part of the time bound
        executable(case[0], t)
    with time_bound(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_feeds_everywhere(*case)


# ------------------------------------------------------------------ what the fuzzer found
def test_initializer_with_more_data_than_its_dims_is_a_model_load_error():
    m = onnx.load_from_string(SEEDS["gemm"])   # (onnx.checker finds too little data)
    w = next(t for t in m.graph.initializer if t.name == "W1")
    w.dims[:] = [2]
    with pytest.raises(lc.ModelLoadError, match="initializer 'W1': cannot read its data"):
        lc.load_onnx(m)


@pytest.mark.parametrize("attrs", [{}, {"value_float": 1.0, "value_int": 1}])
def test_constant_without_exactly_one_value_is_a_model_load_error(attrs):
    node = helper.make_node("Constant", [], ["c"], name="k", **attrs)   # onnx.checker passes
    m = onnx.load_from_string(SEEDS["gemm"])
    m.graph.node.insert(0, node)
    m.graph.node[-1].input[2] = "c"
    with pytest.raises(lc.ModelLoadError, match=f"Constant node 'k' has {len(attrs)} attr"):
        lc.load_onnx(m)


@pytest.mark.parametrize("elem", [TensorProto.UNDEFINED, 99])
def test_input_of_an_odd_onnx_type_is_a_shape_error(elem):
    m = onnx.load_from_string(SEEDS["gemm"])
    m.graph.input[0].type.tensor_type.elem_type = elem
    with pytest.raises(lc.ShapeError, match="input 'x' has dtype"):
        lc.load_onnx(m.SerializeToString())


def test_transpose_with_a_perm_that_is_no_order_of_the_axes_is_a_shape_error():
    m = onnx.load_from_string(SEEDS["matmul"])
    t = next(n for n in m.graph.node if n.op_type == "Transpose")
    t.attribute[0].ints[:] = [0, 0]
    with pytest.raises(lc.ShapeError, match=r"perm \[0, 0\] is not an order of the 2 axes"):
        lc.load_onnx(m)


def test_gemm_of_a_scalar_is_a_shape_error_not_a_weight():
    m = model([helper.make_node("Gemm", ["x", "b", "c"], ["y"], transB=1)],
              [("x", [2, 3])], [("y", [2, 3])], {"b": np.float32(2), "c": np.ones(3, np.float32)})
    with pytest.raises(lc.ShapeError, match="ONNX node 'Gemm'"):
        lc.load_onnx(m)


def tied_graph() -> lc.Graph:
    """matmul of wᵀ [3, 2] and x [N, 4]: only N = 2 fits, which no input shape says."""
    g = lc.Graph("tied")
    x, w = g.input("x", ["N", 4]), g.input("w", [2, 3])
    g.output(g.matmul(w, x, trans_a=True), name="y")
    return g.verify()


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_a_symbolic_dim_tied_to_a_fixed_one_is_checked_at_feed_time(target):
    """Every backend sizes its buffers by the graph's shapes: N = 1 made c read past x."""
    g = tied_graph()
    exe = lc.compile(g, target)
    w = np.ones((2, 3), np.float32)
    for n in (1, 3):
        with pytest.raises(lc.FeedError, match=f"node 'matmul' \\(matmul\\) cannot take N={n}"):
            exe.run({"x": np.ones((n, 4), np.float32), "w": w})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(exe.run({"x": x, "w": w})["y"], w.T @ x)


def test_symbolic_dims_tied_to_each_other_are_checked_at_feed_time():
    """Logits [N, 3] and labels [M]: one batch, two names (unnamed ONNX dims get one each)."""
    m = model([helper.make_node("SoftmaxCrossEntropyLoss", ["z", "t"], ["loss"])],
              [("z", ["N", 3]), ("t", ["M"], I64)], [("loss", [])])
    g = lc.load_onnx(m)
    for t in ("reference", "onnx"):   # c and cuda-cpu take one symbolic dim (CompileError)
        exe = lc.compile(g, t)
        z = np.zeros((4, 3), np.float32)
        with pytest.raises(lc.FeedError, match="cannot take M=2, N=4"):
            exe.run({"z": z, "t": np.zeros(2, np.int64)})
        np.testing.assert_allclose(exe.run({"z": z, "t": np.zeros(4, np.int64)})["loss"],
                                   np.log(3), rtol=1e-6)


def test_feeds_with_keys_that_are_not_names_are_a_feed_error():
    exe = lc.compile(mlp((3, 2)), "reference")
    with pytest.raises(lc.FeedError, match=r"unknown feed\(s\) \[1, None\]"):
        exe.run({"x": np.zeros((1, 3), np.float32), None: 1, 1: 2})


def test_cross_entropy_reduction_that_is_not_text_is_unsupported():
    m = onnx.load_from_string(SEEDS["loss"])
    m.graph.node[1].attribute[0].s = b"\xff"
    with pytest.raises(lc.UnsupportedOpError, match="reduction '\ufffd'"):
        lc.load_onnx(m)


@pytest.mark.parametrize("which", ["shape", "axes"])
def test_reshape_shape_and_reducesum_axes_must_be_integers(which):
    m = onnx.load_from_string(SEEDS["matmul"])
    t = next(t for t in m.graph.initializer if t.name == which)
    t.CopyFrom(numpy_helper.from_array(np.array([np.nan] * len(t.dims), np.float32), which))
    with pytest.raises(lc.ShapeError, match=f"'{which}' holds float32, expected int64"):
        lc.load_onnx(m)


def test_the_time_bound_fires():
    import time

    with pytest.raises(Hang), time_bound(0.05):
        time.sleep(2)
