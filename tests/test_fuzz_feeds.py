"""Fuzzing ``run()`` on odd feeds: dtypes, shapes, memory layouts, Python objects, odd
values and names.

Property: every CPU target either raises a :class:`lincompile.LincompileError` subclass or
gives the right answer (the float64 reference's), never another exception, a crash or a hang
(each example has a time bound), and never changes a feed. Profiles and the long random
search: tests/fuzz_helpers.py.

A failure prints the shrunk example; add it to the regression tests at the end of this file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import TARGETS
from fuzz_helpers import fuzz, time_bound
from helpers import mlp
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper
from onnx_models import I64, model

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable

CPU_TARGETS = [t for t in TARGETS if t != "cuda"]


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
