"""Feature reductions inside a model: ReduceMean (``x - x.mean(-1, keepdim=True)``), ReduceL2
with Clip and Expand (``F.normalize``) and ReduceSum, exported by both torch exporters.

Each model imports and computes torch's forward on every target and trains like torch
(three SGD steps, the reductions on the input and between two Linear layers); the new op
``norm_sqrt`` against float64 central differences; an all-zero row through ``normalize``
(torch's finite gradient, no NaN), NaN and ±Inf against torch; hand-made nodes of the
attribute form (opset 13) against onnxruntime; the refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TARGETS
from helpers import (
    assert_gradients_match_central_differences,
    assert_trains_like_torch,
    export_torch,
    sum_objective,
)
from onnx import helper
from onnx_models import model, ort_run

import lincompile as lc
from lincompile.errors import LincompileError, UnsupportedOpError

torch = pytest.importorskip("torch")
F = torch.nn.functional
C, H, K = 5, 6, 3


def _reduce(kind: str, h):
    if kind == "mean":
        return h - h.mean(dim=-1, keepdim=True)
    if kind == "mean1":
        return h - h.mean(dim=1, keepdim=True)
    if kind == "normalize":
        return F.normalize(h, dim=1)
    return h * h.sum(dim=1, keepdim=True)   # "sum"


class Net(torch.nn.Module):
    """``kind`` on the input then fc1 (``hidden``: fc1, ``kind`` of its output, fc2)."""

    def __init__(self, kind: str, hidden: bool):
        super().__init__()
        torch.manual_seed(0)
        self.kind, self.hidden = kind, hidden
        self.fc1 = torch.nn.Linear(C, H if hidden else K)
        self.fc2 = torch.nn.Linear(H, K) if hidden else None

    def forward(self, x):
        if not self.hidden:
            return self.fc1(_reduce(self.kind, x))
        return self.fc2(_reduce(self.kind, self.fc1(x)))


CASES = [("mean", False), ("mean1", True), ("normalize", False), ("normalize", True),
         ("sum", False), ("sum", True)]
IDS = [f"{k}{'_hidden' if h else ''}" for k, h in CASES]
OPS = {"mean": "div", "mean1": "div", "normalize": "norm_sqrt", "sum": "reduce_sum"}


def _batches(seed: int = 3, n: int = 6):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, C)).astype(np.float32),
             rng.standard_normal((n, K)).astype(np.float32)) for _ in range(3)]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_export_imports_and_trains_like_torch(case, exporter, tmp_path):
    """Forward on every target; three SGD steps on every target (TorchScript) or on the
    reference and onnx (dynamo: the same IR, fewer compiles)."""
    kind, hidden = case
    net = Net(kind, hidden)
    path = export_torch(net, torch.randn(4, C), tmp_path / "m.onnx", exporter)
    g = lc.load_onnx(path)
    assert OPS[kind] in {n.op for n in g.nodes}
    if exporter == "dynamo":
        x = _batches(7)[0][0]
        want = net(torch.from_numpy(x)).detach().numpy()
        for t in TARGETS:
            got = lc.compile(g, t).run({"x": x})[g.outputs[0].name]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=t)
    targets = TARGETS if exporter == "torchscript" else ["reference", "onnx"]
    assert_trains_like_torch(net, g, _batches(), [t for t in targets if t in TARGETS])


# ------------------------------------------------------------------ the new op's gradient
GRAD_OPS = {
    "norm_sqrt": lambda g, x: g.apply("norm_sqrt", [x]),
    "l2": lambda g, x: g.apply("norm_sqrt", [g.reduce_sum(g.mul(x, x), axes=[-1],
                                                           keepdims=True)]),
}


@pytest.mark.parametrize("case", sorted(GRAD_OPS))
def test_gradient_matches_central_differences(case):
    g, wrt = sum_objective({case: GRAD_OPS[case]}, [case], lambda k: ["N", 4], "float64")
    assert_gradients_match_central_differences(g, wrt, case)


def test_norm_sqrt_gradient_is_zero_at_zero_and_nan_as_torch():
    """x == 0 → 0 (torch's masked norm_backward), else dy / (2√x): NaN/Inf pass through."""
    x = np.array([[0.0, 4.0, np.inf, np.nan, 0.0]], np.float32)
    dy = np.array([[3.0, 2.0, 5.0, 1.0, np.nan]], np.float32)
    g = lc.Graph("ns")
    xv, dv = g.input("x", ["N", 5]), g.input("dy", ["N", 5])
    g.output(g.apply("norm_sqrt_grad", [dv, xv]), name="dx")
    want = np.array([[0.0, 0.5, 0.0, np.nan, 0.0]], np.float32)
    for t in TARGETS:
        got = lc.compile(g, t).run({"x": x, "dy": dy})["dx"]
        np.testing.assert_array_equal(got, want, err_msg=t)


# ------------------------------------------------------------------ zero rows, NaN, Inf
@pytest.mark.parametrize("kind", ["normalize", "mean"])
def test_zero_row_nan_and_inf_like_torch(kind, tmp_path):
    """Output, dL/dx and the weight gradients of ``L = Σ y ⊙ r`` on every target: an all-zero
    row (normalize: a finite gradient, not NaN), a row with a NaN, one with +Inf, one with −Inf."""
    net = Net(kind, hidden=False)
    g = lc.load_onnx(export_torch(net, torch.randn(4, C), tmp_path / "m.onnx", "torchscript"))
    y = g.outputs[0]
    g.output(g.reduce_sum(g.mul(y, g.input("r", y.shape))), name="L")
    gg = lc.grad(g, of="L", wrt=["x", "fc1.weight", "fc1.bias"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, C)).astype(np.float32)
    x[1] = 0
    x[2, 1], x[3, 2], x[4, 0] = np.nan, np.inf, -np.inf
    r = rng.standard_normal((6, K)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    net.zero_grad()
    out = net(xt)
    (out * torch.from_numpy(r)).sum().backward()
    want = {y.name: out.detach().numpy(), "x.grad": xt.grad.numpy(),
            "fc1.weight.grad": net.fc1.weight.grad.numpy(),
            "fc1.bias.grad": net.fc1.bias.grad.numpy()}
    # the zero row: x / eps, so dy / eps through the division, and 0 (not NaN) through
    # the norm (clamped away, and torch's norm_backward masks a zero norm)
    assert np.isfinite(want["x.grad"][:2]).all()
    for t in TARGETS:
        got = lc.compile(gg, t).run({"x": x, "r": r})
        for k, w in want.items():
            np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(w), f"{t}: {k}")
            np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-6, equal_nan=True,
                                       err_msg=f"{t}: {k}")


# ------------------------------------------------------------------ hand-made nodes
def _axes_form(op: str, axes, opset: int, **attrs):
    """``op`` over ``axes``: an attribute (opset 13) or an input (opset 18)."""
    if opset < 18 and op != "ReduceSum":
        return [helper.make_node(op, ["x"], ["r"], axes=axes, **attrs)], {}
    return ([helper.make_node(op, ["x", "axes"], ["r"], **attrs)],
            {"axes": np.array(axes, np.int64)})


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op,keep", [("ReduceMean", 1), ("ReduceMean", 0), ("ReduceL2", 1),
                                     ("ReduceSum", 1)])
def test_onnx_nodes_match_onnxruntime(op, keep, opset):
    """``y = x − op(x)`` (keepdims 0: ``y = op(x)``) on [N, 3, 4] over the last axis."""
    nodes, inits = _axes_form(op, [-1], opset, keepdims=keep)
    out_shape = ["N", 3, 4] if keep else ["N", 3]
    if keep:
        nodes.append(helper.make_node("Sub", ["x", "r"], ["y"]))
    else:
        nodes[0].output[0] = "y"
    m = model(nodes, [("x", ["N", 3, 4])], [("y", out_shape)], inits, opset=opset)
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 1] = 0
    want = ort_run(m, {"x": x})["y"]
    g = lc.load_onnx(m)
    for t in TARGETS:
        got = lc.compile(g, t).run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=t)


def test_reduce_mean_over_several_feature_axes():
    """ReduceMean over axes [1, 2] of [N, 3, 4] (keepdims 0): the sum over 12, then / 12."""
    nodes, inits = _axes_form("ReduceMean", [1, -1], 18, keepdims=0)
    nodes[0].output[0] = "y"
    m = model(nodes, [("x", ["N", 3, 4])], [("y", ["N"])], inits)
    x = np.random.default_rng(4).standard_normal((3, 3, 4)).astype(np.float32)
    want = ort_run(m, {"x": x})["y"]
    g = lc.load_onnx(m)
    for t in TARGETS:
        np.testing.assert_allclose(lc.compile(g, t).run({"x": x})["y"], want, rtol=1e-5,
                                   atol=1e-6, err_msg=t)


def _refusal(nodes, inits=(), shape=("N", 4), out=("N", 4)):
    m = model(nodes, [("x", list(shape))], [("y", list(out))], inits)
    with pytest.raises(UnsupportedOpError) as e:
        lc.load_onnx(m)
    assert isinstance(e.value, LincompileError)
    return str(e.value)


def test_out_of_scope_reductions_are_refused():
    ax = lambda *a: {"axes": np.array(a, np.int64)}
    msg = _refusal([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="batch_mean")],
                   ax(0), out=(1, 4))
    assert "'batch_mean'" in msg and "batch" in msg and "\n" not in msg
    msg = _refusal([helper.make_node("ReduceMean", ["x"], ["y"], name="all")], out=(1, 1))
    assert "'all'" in msg and "batch" in msg
    msg = _refusal([helper.make_node("ReduceL2", ["x", "axes"], ["y"], keepdims=0,
                                     name="l2")], ax(1), out=("N",))
    assert "'l2'" in msg and "keepdims" in msg
    msg = _refusal([helper.make_node("ReduceL2", ["x", "axes"], ["r"], name="l2b"),
                    helper.make_node("Sub", ["x", "r"], ["y"])], ax(0))
    assert "'l2b'" in msg
    msg = _refusal([helper.make_node("Expand", ["x", "s"], ["y"], name="grow")],
                   {"s": np.array([2, 3, 4], np.int64)}, shape=(3, 4), out=(2, 3, 4))
    assert "'grow'" in msg and "rank" in msg


def test_expand_to_a_constant_shape_of_the_same_shape_is_the_identity():
    m = model([helper.make_node("Expand", ["x", "s"], ["y"])], [("x", [2, 4])],
              [("y", [2, 4])], {"s": np.array([1, 4], np.int64)})
    g = lc.load_onnx(m)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(lc.compile(g, "reference").run({"x": x})["y"], x)


@pytest.mark.parametrize("portable", [False, True])
def test_saved_graph_loads_back_with_norm_sqrt(portable, tmp_path):
    """norm_sqrt and its gradient round-trip through lincompile's own ONNX files."""
    g, wrt = sum_objective(GRAD_OPS, sorted(GRAD_OPS), lambda k: ["N", 4])
    gg = lc.grad(g, of="L", wrt=wrt)
    back = lc.load_onnx(lc.save_onnx(gg, tmp_path / "n.onnx", portable=portable))
    assert sorted(n.op for n in back.nodes) == sorted(n.op for n in gg.nodes)
    assert {"norm_sqrt", "norm_sqrt_grad"} <= {n.op for n in back.nodes}
