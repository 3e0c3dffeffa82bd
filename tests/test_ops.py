"""Every op: forward against an independent float64 formula, gradient against central
finite differences, and forward + gradient graphs through every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import COMPILED

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _log_softmax_loops(z, labels):
    out = 0.0
    for n in range(z.shape[0]):
        m = max(z[n])
        out -= z[n, labels[n]] - m - np.log(sum(np.exp(v - m) for v in z[n]))
    return out / z.shape[0]


# name -> (build(g) -> output, independent float64 formula of the feeds)
def _away(g: lc.Graph, u: lc.Value) -> lc.Value:
    """u² + 1: a divisor that is never near 0."""
    return g.add(g.mul(u, u), g.const(np.array(1, np.float32), g.fresh("one")))


CASES = {
    "linear": (lambda g: g.apply("linear", [g.input("x", ["N", 5]), g.input("w", [3, 5]),
                                            g.input("b", [3])]),
               lambda f: np.einsum("nk,ok->no", f["x"], f["w"]) + f["b"]),
    "linear_nobias": (lambda g: g.apply("linear", [g.input("x", ["N", 5]), g.input("w", [3, 5])]),
                      lambda f: np.einsum("nk,ok->no", f["x"], f["w"])),
    "matmul": (lambda g: g.matmul(g.input("a", ["N", 4]), g.input("b", [4, 3])),
               lambda f: np.einsum("ik,kj->ij", f["a"], f["b"])),
    "matmul_ta": (lambda g: g.matmul(g.input("a", ["N", 4]), g.input("b", ["N", 3]),
                                     trans_a=True),
                  lambda f: np.einsum("ki,kj->ij", f["a"], f["b"])),
    "matmul_tb": (lambda g: g.matmul(g.input("a", ["N", 4]), g.input("b", [3, 4]), trans_b=True),
                  lambda f: np.einsum("ik,jk->ij", f["a"], f["b"])),
    "matmul_tab": (lambda g: g.matmul(g.input("a", [4, "N"]), g.input("b", [3, 4]),
                                      trans_a=True, trans_b=True),
                   lambda f: np.einsum("ki,jk->ij", f["a"], f["b"])),
    "reduce_sum_batch": (lambda g: g.reduce_sum(g.input("x", ["N", 4]), axes=[0]),
                         lambda f: f["x"].sum(0)),
    "reduce_sum_rows_keep": (lambda g: g.reduce_sum(g.input("x", ["N", 4]), axes=[1],
                                                    keepdims=True),
                             lambda f: f["x"].sum(1, keepdims=True)),
    "reduce_sum_all": (lambda g: g.reduce_sum(g.input("x", ["N", 4])),
                       lambda f: np.array(f["x"].sum())),
    "l2_norm": (lambda g: g.apply("norm_sqrt", [g.reduce_sum(
        g.mul(*[g.input("x", ["N", 4])] * 2), axes=[1], keepdims=True)]),
        lambda f: np.sqrt((f["x"] * f["x"]).sum(1, keepdims=True))),
    "broadcast_to": (lambda g: g.broadcast_to(g.input("v", [1, 4]), g.input("like", ["N", 4])),
                     lambda f: np.tile(f["v"], (f["like"].shape[0], 1))),
    "add": (lambda g: g.add(g.input("a", ["N", 4]), g.input("b", ["N", 4])),
            lambda f: f["a"] + f["b"]),
    "add_bias": (lambda g: g.add(g.input("a", ["N", 4]), g.input("b", [4])),
                 lambda f: f["a"] + f["b"][None, :]),
    "add_row": (lambda g: g.add(g.input("a", [1, 4]), g.input("b", ["N", 4])),
                lambda f: f["a"] + f["b"]),
    "mul": (lambda g: g.mul(g.input("a", ["N", 4]), g.input("b", ["N", 4])),
            lambda f: f["a"] * f["b"]),
    "mul_scalar": (lambda g: g.mul(g.input("a", ["N", 4]), g.input("s", [])),
                   lambda f: f["a"] * float(f["s"])),
    # divisors u² + 1, kept away from 0 so that central differences stay accurate
    "div": (lambda g: g.div(g.input("a", ["N", 4]), _away(g, g.input("u", ["N", 4]))),
            lambda f: f["a"] / (f["u"] ** 2 + 1)),
    "div_bias": (lambda g: g.div(g.input("a", ["N", 4]), _away(g, g.input("u", [4]))),
                 lambda f: f["a"] / (f["u"][None, :] ** 2 + 1)),
    "div_rows": (lambda g: g.div(_away(g, g.input("u", [1, 4])), g.input("a", ["N", 4])),
                 lambda f: (f["u"] ** 2 + 1) / f["a"]),
    "relu": (lambda g: g.relu(g.input("x", ["N", 6])), lambda f: f["x"] * (f["x"] > 0)),
    "sigmoid": (lambda g: g.sigmoid(g.input("x", ["N", 6])), lambda f: _sigmoid(f["x"])),
    "tanh": (lambda g: g.tanh(g.input("x", ["N", 6])),
             lambda f: (np.exp(2 * f["x"]) - 1) / (np.exp(2 * f["x"]) + 1)),
    "flatten": (lambda g: g.flatten(g.input("x", ["N", 2, 3])),
                lambda f: f["x"].reshape(f["x"].shape[0], 6)),
    "reshape": (lambda g: g.reshape(g.input("x", ["N", 6]), [-1, 3, 2]),
                lambda f: f["x"].reshape(-1, 3, 2)),
    "identity": (lambda g: g.apply("identity", [g.input("x", ["N", 3])]), lambda f: f["x"]),
    # the gradient of concat is slice_last of dY (the middle input's slice starts at 2)
    "concat": (lambda g: g.concat([g.input("a", ["N", 2]), g.input("b", ["N", 3]),
                                   g.input("c", ["N", 1])]),
               lambda f: np.hstack([f["a"], f["b"], f["c"]])),
    "concat_3d": (lambda g: g.concat([g.input("a", ["N", 2, 3]), g.input("b", ["N", 2, 1])],
                                     axis=2),
                  lambda f: np.dstack([f["a"], f["b"]])),
    "mse": (lambda g: g.mse(g.input("p", ["N", 3]), g.input("t", ["N", 3])),
            lambda f: np.array(((f["p"] - f["t"]) ** 2).sum() / f["p"].size)),
    "softmax_cross_entropy": (
        lambda g: g.softmax_cross_entropy(g.input("z", ["N", 5]),
                                          g.input("labels", ["N"], "int64")),
        lambda f: np.array(_log_softmax_loops(f["z"], f["labels"]))),
}


def build(case: str) -> lc.Graph:
    g = lc.Graph(case)
    g.output(CASES[case][0](g), name="y")
    return g.verify()


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_independent_formula(case):
    g = build(case)
    feeds = lc.random_feeds(g, batch=3, seed=1)
    got = ReferenceExecutable(g, "float64").run(feeds)["y"]
    want = CASES[case][1]({k: v.astype(np.float64) if v.dtype.kind == "f" else v
                           for k, v in feeds.items()})
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def objective(case: str) -> tuple[lc.Graph, list[str]]:
    """L = Σ y ⊙ r with a random fed r, and the float inputs to differentiate."""
    g = build(case)
    y = g.outputs[0]
    r = g.input("r", y.shape, y.dtype)
    g.outputs = [g.output(g.reduce_sum(g.mul(y, r)), name="L")]
    return g, [v.name for v in g.inputs if v.dtype != "int64" and v.name != "r"]


def central_differences(g: lc.Graph, feeds: dict, wrt: str, h: float = 1e-6) -> np.ndarray:
    exe = ReferenceExecutable(g, "float64")
    base = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    x = base[wrt]
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        for sign in (1, -1):
            xp = x.copy()
            xp[i] += sign * h
            out[i] += sign * float(exe.run({**base, wrt: xp})["L"]) / (2 * h)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(case):
    g, wrt = objective(case)
    gg = lc.grad(g, of="L", wrt=wrt)
    feeds = lc.random_feeds(gg, batch=3, seed=2)
    grads = ReferenceExecutable(gg, "float64").run(feeds)
    for w in wrt:
        fd = central_differences(g, feeds, w)
        ad = grads[f"{w}.grad"]
        err = np.linalg.norm(ad - fd) / max(np.linalg.norm(fd), 1e-300)
        assert err <= 1e-6, f"{case}: d/d{w} relative error {err:.2e}"


@pytest.mark.parametrize("target", COMPILED)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradient_on_backend(case, target):
    g, wrt = objective(case)
    for graph in (build(case), lc.grad(g, of="L", wrt=wrt)):
        for batch in (1, 5):
            report = lc.validate(graph, ["reference", target], batch=batch, seed=batch)
            assert report.ok, f"{case} on {target}, batch {batch}:\n{report}"


def test_every_declared_op_is_covered():
    from test_activations_more import covered_ops as more_acts  # and these there
    from test_math_ops import covered_ops as math_ops  # and the math ops there
    from test_ops_mlp import covered_ops  # the MLP ops are checked there

    used = set()
    for case in CASES:
        g, wrt = objective(case)
        used |= {n.op for n in lc.grad(g, of="L", wrt=wrt).nodes}
    optim = {"sgd", "adam", "adamw"}  # covered by tests/test_training.py
    optim |= {"adagrad", "onnx_momentum", "onnx_adam"}  # by tests/test_preview_ops.py
    assert set(lc.ops.OPS) - used - optim - covered_ops() - more_acts() - math_ops() == set()
