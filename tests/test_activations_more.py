"""ELU, SELU, CELU, Softplus, Mish, Softsign, exp, Hardtanh/ReLU6 (Clip), Hardsigmoid,
Hardswish and PReLU (trainable slope).

Gradients against float64 central differences; every target against the float64 reference
(one graph holds every op, forward and backward); the reference against torch float64;
NaN, ±Inf, 0 and the kinks against torch (its vectorized CPU loops: see the ops' modules);
ONNX import of both torch exporters' files, of Keras 3 and of hand-made Clip/Selu/Softplus
nodes; three SGD steps of an exported stack of them on every target against torch.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import pytest
from conftest import COMPILED, TARGETS
from helpers import assert_gradients_match_central_differences, sum_objective
from onnx import TensorProto, helper
from onnx_models import model, ort_run

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable

C = 6   # features of every op's input [N, 3, C] (PReLU: [N, C], as torch's channel dim 1)
INF = float("inf")


def _scaled(op: str, k: float = 4.0, **attrs):
    """``op(k · x)``: inputs reach the clipped regions (x ~ N(0, 1) in random feeds)."""
    return lambda g, x: g.apply(op, [g.mul(x, g.const(np.array(k, x.dtype), "k"))], **attrs)


def _prelu(shape):
    return lambda g, x: g.apply("prelu", [x, g.input(f"slope{len(shape)}{shape[0]}", shape,
                                                     x.dtype)])


#: case -> build(g, x) -> y
OPS = {
    "elu": lambda g, x: g.apply("elu", [x], alpha=0.5),
    "selu": lambda g, x: g.apply("selu", [x]),
    "celu": lambda g, x: g.apply("celu", [x], alpha=0.7),
    "softplus": lambda g, x: g.apply("softplus", [x]),
    "softplus_b2": lambda g, x: g.apply("softplus", [x], beta=2.0, threshold=1.5),
    "softplus_inf": lambda g, x: g.apply("softplus", [x], threshold=INF),
    "mish": lambda g, x: g.apply("mish", [x]),
    "softsign": lambda g, x: g.apply("softsign", [x]),
    "exp": lambda g, x: g.apply("exp", [x]),
    "hardtanh": lambda g, x: g.apply("hardtanh", [x], min_val=-0.5, max_val=1.0),
    "relu6": _scaled("hardtanh", min_val=0.0, max_val=6.0),
    "hardsigmoid": _scaled("hardsigmoid"),
    "hardswish": _scaled("hardswish"),
    "prelu": _prelu((C,)),
    "prelu1": _prelu((1,)),
    "prelu_rows": _prelu((3, 1)),   # ONNX broadcasting: one slope per row of [N, 3, C]
}
SHAPES = {"prelu": ["N", C], "prelu1": ["N", C]}
#: the cases torch checks (torch's PReLU takes the channel dim 1, not a [3, 1] slope)
TORCH = [k for k in OPS if k != "prelu_rows"]


def objective(cases, dtype: str = "float32") -> tuple[lc.Graph, list[str]]:
    """L = Σ_k Σ y_k ⊙ r_k over ``cases`` and every y.<case>: see helpers.sum_objective."""
    return sum_objective(OPS, cases, lambda k: SHAPES.get(k, ["N", 3, C]), dtype, "more_acts")


@functools.cache
def grad_graph(dtype: str = "float32") -> lc.Graph:
    g, wrt = objective(OPS, dtype)
    return lc.grad(g, of="L", wrt=wrt)


def covered_ops() -> set[str]:
    """The IR ops this file checks (for test_ops' coverage test)."""
    return {n.op for n in grad_graph().nodes}


# ------------------------------------------------------------------ gradients and targets
@pytest.mark.parametrize("case", sorted(OPS))
def test_gradient_matches_finite_differences(case):
    assert_gradients_match_central_differences(*objective([case]), case)


def test_slope_gradients_sum_over_the_broadcast_axes():
    """dSlope is prelu_slope_grad summed down to the slope's shape (reduce_sum, as a bias)."""
    made = grad_graph().producers()
    for name, axes, keep in (("slope16.grad", [0], False), ("slope11.grad", [0], True),
                             ("slope23.grad", [1], True)):
        n = made[name]
        assert (n.op, n.attrs["axes"], n.attrs["keepdims"]) == ("reduce_sum", axes, keep), name
    assert made[made["slope16.grad"].inputs[0].name].op == "prelu_slope_grad"
    assert {"elu_grad", "selu_grad", "celu_grad", "softplus_grad", "mish_grad",
            "softsign_grad", "hardtanh_grad", "hardsigmoid_grad", "hardswish_grad",
            "prelu_grad", "prelu_slope_grad"} <= covered_ops()


@pytest.mark.parametrize("target", COMPILED)
def test_every_target_matches_the_float64_reference(target):
    for batch in (1, 3):
        report = lc.validate(grad_graph(), ["reference", target], batch=batch, seed=batch)
        assert report.ok, f"{target}, batch {batch}:\n{report}"


def test_float64_graph_on_c_matches_the_reference():
    report = lc.validate(grad_graph("float64"), ["reference", "c"], batch=3)
    assert report.ok and max(r.rel for r in report.rows) < 1e-12, str(report)


@pytest.mark.parametrize("portable", [False, True])
def test_saved_graph_loads_back_as_the_same_ops(portable, tmp_path):
    """Attributes come back as float32 (ONNX's float attributes; hardsigmoid's 1/6 is
    snapped back to 1/6 by the HardSigmoid importer)."""
    g = grad_graph()
    back = lc.load_onnx(lc.save_onnx(g, tmp_path / "acts.onnx", portable=portable))
    f32 = lambda v: float(np.float32(v)) if isinstance(v, float) else str(v)
    key = lambda n: (n.op, sorted((k, f32(v)) for k, v in n.attrs.items()))
    assert sorted(map(key, back.nodes)) == sorted(map(key, g.nodes))
    feeds = lc.random_feeds(g, batch=2, seed=4)
    want = ReferenceExecutable(g, "float64").run(feeds)
    got = ReferenceExecutable(back, "float64").run(feeds)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-6, atol=1e-9, err_msg=k)


# ------------------------------------------------------------------ torch
def _torch_ops(torch):
    F = torch.nn.functional
    return {
        "elu": lambda x, p: F.elu(x, 0.5),
        "selu": lambda x, p: F.selu(x),
        "celu": lambda x, p: F.celu(x, 0.7),
        "softplus": lambda x, p: F.softplus(x),
        "softplus_b2": lambda x, p: F.softplus(x, 2.0, 1.5),
        # no threshold: torch's with one no finite x·β passes (its +Inf is the limit, 1·dy)
        "softplus_inf": lambda x, p: F.softplus(x, 1.0, 1e30),
        "mish": lambda x, p: F.mish(x),
        "softsign": lambda x, p: F.softsign(x),
        "exp": lambda x, p: torch.exp(x),
        "hardtanh": lambda x, p: F.hardtanh(x, -0.5, 1.0),
        "relu6": lambda x, p: F.relu6(4 * x),
        "hardsigmoid": lambda x, p: F.hardsigmoid(4 * x),
        "hardswish": lambda x, p: F.hardswish(4 * x),
        "prelu": lambda x, p: F.prelu(x, p["slope16"]),
        "prelu1": lambda x, p: F.prelu(x, p["slope11"]),
    }


def _vectorized(f, x):
    """``f(x)`` with every element of ``x`` in torch's vectorized CPU loop: x flattened
    and followed by 64 ones (the scalar tail of a loop gets those)."""
    import torch

    flat = torch.cat([x.reshape(-1), torch.ones(64, dtype=x.dtype)])
    return f(flat)[:x.numel()].reshape(x.shape)


def torch_outputs(feeds: dict, dtype: str = "float64") -> dict[str, np.ndarray]:
    """What torch (autograd) gives for grad_graph()'s outputs of the TORCH cases."""
    torch = pytest.importorskip("torch")
    td = getattr(torch, dtype)
    t = {k: torch.tensor(v, dtype=td, requires_grad=not k.startswith("r."))
         for k, v in feeds.items()}
    out = {}
    for k, f in _torch_ops(torch).items():
        x = t[f"x.{k}"]
        y = f(x, t) if k.startswith("prelu") else _vectorized(lambda v: f(v, t), x)
        (y * t[f"r.{k}"]).sum().backward()
        out[f"y.{k}"] = y.detach().numpy()
    out.update({f"{k}.grad": v.grad.numpy() for k, v in t.items() if v.grad is not None})
    return out


def test_reference_matches_torch_in_float64():
    feeds = lc.random_feeds(grad_graph(), batch=3, seed=7)
    got = ReferenceExecutable(grad_graph(), "float64").run(feeds)
    want = torch_outputs(feeds)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-10, atol=1e-12, err_msg=k)


#: the kinks of each case (values of x; ×4 for the scaled ones is applied here)
KINKS = {"elu": [0.0, -0.0], "selu": [0.0], "celu": [0.0], "softplus": [20.0, 25.0],
         "softplus_b2": [0.75, 1.0], "hardtanh": [-0.5, 1.0], "relu6": [0.0, 1.5],
         "hardsigmoid": [-0.75, 0.75], "hardswish": [-0.75, 0.75], "prelu": [0.0],
         "prelu1": [0.0]}


def special_feeds() -> dict[str, np.ndarray]:
    """Random feeds (batch 2) with NaN, ±Inf, ±0 and each case's kinks in its input."""
    feeds = lc.random_feeds(grad_graph(), batch=2, seed=11)
    for k in TORCH:
        x = feeds[f"x.{k}"].reshape(-1)
        vals = [np.nan, np.inf, -np.inf, 0.0, -0.0, *KINKS.get(k, [])]
        x[1:2 * len(vals):2] = vals
    return feeds


@pytest.mark.parametrize("target", TARGETS)
def test_nan_inf_and_kinks_like_torch(target):
    """NaN, ±Inf and the subgradients at the kinks land where torch puts them (float64;
    torch's float32 kernels put them in the same places)."""
    feeds = special_feeds()
    want = torch_outputs(feeds)
    want32 = torch_outputs(feeds, "float32")
    got = lc.compile(grad_graph(), target).run(feeds)
    for k in TORCH:
        assert np.isnan(want[f"x.{k}.grad"]).any() or np.isnan(want[f"y.{k}"]).any(), k
        for name in (f"y.{k}", f"x.{k}.grad"):
            np.testing.assert_array_equal(np.isnan(want32[name]), np.isnan(want[name]), name)
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                                       equal_nan=True, err_msg=f"{target}: {name}")
    for name in ("slope16.grad", "slope11.grad"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                                   equal_nan=True, err_msg=f"{target}: {name}")


# ------------------------------------------------------------------ ONNX import
def _load(nodes, inits=(), opset=18, shape=("N", 3)):
    return lc.load_onnx(model(nodes, [("x", list(shape))], [("y", list(shape))], inits,
                              opset=opset))


@pytest.mark.parametrize("form", ["opset6_attrs", "opset18_inputs", "max_only", "min_only"])
def test_clip_is_hardtanh_with_constant_bounds(form):
    f = np.float32
    node, inits, opset = {
        "opset6_attrs": (helper.make_node("Clip", ["x"], ["y"], min=-1.5, max=2.0), {}, 6),
        "opset18_inputs": (helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
                           {"lo": f(-1.5), "hi": f(2.0)}, 18),
        "max_only": (helper.make_node("Clip", ["x", "", "hi"], ["y"]), {"hi": f(2.0)}, 18),
        "min_only": (helper.make_node("Clip", ["x", "lo"], ["y"]), {"lo": f(-1.5)}, 18),
    }[form]
    m = model([node], [("x", ["N", 3])], [("y", ["N", 3])], inits, opset=opset)
    (n,) = lc.load_onnx(m).nodes
    big = float(np.finfo(np.float32).max)   # ONNX: a missing bound is the dtype's extreme
    lo = -big if form == "max_only" else -1.5
    hi = big if form == "min_only" else 2.0
    assert (n.op, n.attrs) == ("hardtanh", {"min_val": lo, "max_val": hi})
    x = np.array([[np.nan, -np.inf, np.inf], [-3, 0.5, 3]], np.float32)
    got = lc.compile(lc.load_onnx(m), "c").run({"x": x})["y"]
    np.testing.assert_array_equal(got, ort_run(m, {"x": x})["y"])


def test_clip_with_a_computed_bound_is_refused():
    m = model([helper.make_node("Clip", ["x", "", "hi"], ["y"], name="clip")],
              [("x", ["N", 3]), ("hi", [])], [("y", ["N", 3])])
    with pytest.raises(lc.UnsupportedOpError, match="max must be a constant") as e:
        lc.load_onnx(m)
    assert "'clip'" in str(e.value) and "\n" not in str(e.value)


def test_clip_of_int64_is_refused():
    m = model([helper.make_node("Clip", ["x"], ["y"], name="clip")],
              [("x", ["N", 3], TensorProto.INT64)], [("y", ["N", 3], TensorProto.INT64)])
    with pytest.raises(lc.UnsupportedOpError, match="only float tensors"):
        lc.load_onnx(m)


def test_selu_takes_torch_constants_and_refuses_others():
    (n,) = _load([helper.make_node("Selu", ["x"], ["y"])]).nodes
    assert (n.op, n.attrs) == ("selu", {})
    with pytest.raises(lc.UnsupportedOpError, match="alpha=1.5"):
        _load([helper.make_node("Selu", ["x"], ["y"], alpha=1.5)])


def test_hard_sigmoid_and_softplus_take_onnx_semantics():
    """HardSigmoid's default alpha is 0.2 (torch's 1/6 arrives as an attribute); ONNX's
    Softplus has no threshold: log(1 + e^x) for every x, as onnxruntime computes it."""
    m = model([helper.make_node("HardSigmoid", ["x"], ["h"]),
               helper.make_node("Softplus", ["h"], ["s"]),
               helper.make_node("Softplus", ["x"], ["y"])],
              [("x", ["N", 3])], [("y", ["N", 3]), ("s", ["N", 3])])
    g = lc.load_onnx(m)
    assert [(n.op, n.attrs) for n in g.nodes] == [
        ("hardsigmoid", {"alpha": 0.2, "beta": 0.5}),
        ("softplus", {"beta": 1.0, "threshold": INF}),
        ("softplus", {"beta": 1.0, "threshold": INF})]
    x = np.array([[-100, -3, 0], [2.6, 30, 100]], np.float32)
    want = ort_run(m, {"x": x})
    for t in ("reference", "c"):
        got = lc.compile(g, t).run({"x": x})
        for k in ("y", "s"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-30, err_msg=t)


def test_softsign_and_mish_node_patterns_with_same_dtype_casts():
    """Abs/Add/Div (both torch exporters, Keras) and Softplus/Tanh/Mul with Keras' Casts."""
    k = lambda v: np.array(v, np.float32)
    cast = lambda a, b: helper.make_node("Cast", [a], [b], to=TensorProto.FLOAT)
    m = model([helper.make_node("Abs", ["x"], ["a"]),
               helper.make_node("Add", ["a", "one"], ["d"]),
               helper.make_node("Div", ["x", "d"], ["s"]),
               cast("s", "c"), helper.make_node("Softplus", ["c"], ["sp"]), cast("sp", "c2"),
               helper.make_node("Tanh", ["c2"], ["t"]), helper.make_node("Mul", ["c", "t"], ["y"])],
              [("x", ["N", 3])], [("y", ["N", 3])], {"one": k(1)})
    g = lc.load_onnx(m)
    assert [n.op for n in g.nodes] == ["softsign", "identity", "mish"]
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32) * 3
    np.testing.assert_allclose(lc.compile(g, "c").run({"x": x})["y"], ort_run(m, {"x": x})["y"],
                               rtol=1e-6)


# ------------------------------------------------------------------ torch exports
def stack(torch):
    """Linear layers with every activation of this file between them."""
    nn = torch.nn

    class Exp(nn.Module):
        def forward(self, x):
            return torch.exp(x)

    acts = [nn.ELU(0.5), nn.SELU(), nn.CELU(0.7), nn.Softplus(beta=2.0), nn.Softplus(),
            nn.Mish(), nn.Softsign(), Exp(), nn.Hardtanh(-0.5, 0.7), nn.ReLU6(),
            nn.Hardsigmoid(), nn.Hardswish(), nn.PReLU(8), nn.PReLU()]
    torch.manual_seed(0)
    layers = [nn.Linear(4, 8)]
    for a in acts:
        layers += [a, nn.Linear(8, 8)]
    net = nn.Sequential(*layers[:-1], nn.Linear(8, 3))
    with torch.no_grad():   # distinct slopes, and pre-activations that reach the clipping
        for p in net.parameters():
            p.mul_(2.5)
        net[-4].weight.copy_(torch.linspace(-0.5, 0.5, 8))
        net[-2].weight.fill_(0.1)
    return net


ACT_OPS = ["elu", "selu", "celu", "softplus", "softplus", "mish", "softsign", "exp",
           "hardtanh", "hardtanh", "hardsigmoid", "hardswish", "prelu", "prelu"]
STACK_OPS = [op for a in ACT_OPS for op in ("linear", a)] + ["linear"]


@functools.cache
def stack_file(tmp: str, exporter: str) -> str:
    torch = pytest.importorskip("torch")
    from test_ops_mlp import export

    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    return str(export(stack(torch), x, f"{tmp}/stack_{exporter}.onnx", exporter))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_exports_import_and_match_torch(exporter, tmp_path_factory):
    """Both exporters: one IR op per activation (TorchScript's Softplus(β)/β and
    x · Tanh(Softplus(x)), dynamo's Softplus with its threshold); torch's outputs on every
    target, and onnxruntime's on the exported file itself."""
    torch = pytest.importorskip("torch")
    path = stack_file(str(tmp_path_factory.getbasetemp()), exporter)
    g = lc.load_onnx(path)
    assert [n.op for n in g.nodes if n.op != "identity"] == STACK_OPS
    sp = [n.attrs for n in g.nodes if n.op == "softplus"]
    thr = INF if exporter == "torchscript" else 20.0   # TorchScript drops the threshold
    assert sp == [{"beta": 2.0, "threshold": thr}, {"beta": 1.0, "threshold": thr}]
    slopes = [n.inputs[1] for n in g.nodes if n.op == "prelu"]
    assert [(s.name, s.shape) for s in slopes] == [("25.weight", (8,)), ("27.weight", (1,))]
    assert all(g.params[s.name].trainable for s in slopes)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)) * 2   # dynamo: batch 5
    with torch.no_grad():
        want = stack(torch)(x).numpy()
    feeds = {"x": x.numpy()}
    file_out = ort_run(onnx.load(path), feeds)["y"]
    np.testing.assert_allclose(file_out, want, rtol=1e-5, atol=1e-6)
    for t in TARGETS if exporter == "torchscript" else ("reference", "onnx"):
        got = lc.compile(g, t).run(feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=t)
    # trained slopes go back into the file's own tensors (dynamo: val_* [1, C])
    out = tmp_path_factory.mktemp("back") / "trained.onnx"
    values = {v.name: g.params[v.name].data for v in g.trainable()}
    lc.write_trained(path, {**values, "25.weight": np.full(8, 0.5, np.float32),
                            "27.weight": np.full(1, 0.125, np.float32)}, out)
    back = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    prelus = [n for n in onnx.load(out).graph.node if n.op_type == "PRelu"]
    np.testing.assert_array_equal(back[prelus[0].input[1]].reshape(-1), np.full(8, 0.5))
    np.testing.assert_array_equal(back[prelus[1].input[1]].reshape(-1), [0.125])


def test_stack_trains_like_torch_on_every_target(tmp_path_factory):
    """Three SGD steps (momentum) of the TorchScript export, PReLU slopes included."""
    torch = pytest.importorskip("torch")
    path = stack_file(str(tmp_path_factory.getbasetemp()), "torchscript")
    t = lc.training_graph(lc.load_onnx(path), loss="mse", optimizer=lc.SGD(0.05, momentum=0.9))
    net = stack(torch)
    weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    assert {k for k, v in t.initial_state.items() if not k.endswith(".velocity")} == \
        set(weights)
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((6, 4)).astype(np.float32) * 2,
                rng.standard_normal((6, 3)).astype(np.float32)) for _ in range(3)]
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    want_loss = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        opt.step()
        want_loss.append(loss.item())
    want = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    moved = [k for k in weights if not np.allclose(want[k], weights[k])]
    assert len(moved) == len(weights), "every parameter (both slopes too) must train"
    for target in TARGETS:
        exe = lc.compile(t, target)
        state = dict(t.initial_state)
        losses = []
        for x, y in batches:
            out = exe.run({"x": x, "target": y, "lr": np.float32(0.05), **state})
            losses.append(float(out["loss"]))
            state = {k: out[f"{k}.next"] for k in state}
        np.testing.assert_allclose(losses, want_loss, rtol=1e-4, err_msg=target)
        for k, w in want.items():
            err = np.linalg.norm(state[k] - w) / np.linalg.norm(w)
            assert err <= 1e-4, f"{target}: {k} after 3 SGD steps, relative error {err:.1e}"


# ------------------------------------------------------------------ Keras 3
KERAS_ACTS = ["elu", "selu", "softplus", "relu6", "hard_sigmoid", "softsign", "mish",
              "hard_silu", "celu", "exponential"]
KERAS_OPS = ["elu", "selu", "softplus", "hardtanh", "hardsigmoid", "softsign", "mish",
             "hardswish", "celu", "exp"]


def test_keras_dense_activations_import_and_match_keras(tmp_path, capfd):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}; this test needs "
                    "KERAS_BACKEND=torch")
    keras.utils.set_random_seed(0)
    # random biases: torch's exporter shares equal (zero) biases between layers through
    # Identity nodes, which would make them matmul + add instead of Linear biases
    layers = [keras.layers.Dense(8, activation=a, bias_initializer="random_normal")
              for a in KERAS_ACTS]
    net = keras.Sequential([keras.Input((5,)), *layers, keras.layers.Dense(2)])
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    net(x)
    path = tmp_path / "keras.onnx"
    net.export(str(path), format="onnx")
    capfd.readouterr()
    g = lc.load_onnx(path)
    assert [n.op for n in g.nodes if n.op not in ("linear", "identity")] == KERAS_OPS
    want = net(x).detach().cpu().numpy()
    for t in ("reference", "c"):
        got = lc.compile(g, t).run({g.inputs[0].name: x})
        np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-5, atol=1e-6,
                                   err_msg=t)


# ------------------------------------------------------------------ ONNX's node tests
#: ONNX's own node test cases of these ops (an outside oracle), each in scope or out.
FAMILY = r"^test_(elu|selu|celu|softplus|clip|hardsigmoid|hardswish|mish|softsign|prelu|exp)(_|$)"
IN_SCOPE = (
    "test_celu", "test_elu", "test_elu_default", "test_elu_example", "test_exp",
    "test_exp_example", "test_hardsigmoid", "test_hardsigmoid_default",
    "test_hardsigmoid_example", "test_hardswish", "test_hardswish_expanded", "test_mish",
    "test_mish_expanded", "test_prelu_broadcast", "test_prelu_example", "test_selu_default",
    "test_softplus", "test_softplus_example", "test_softsign", "test_softsign_example",
    "test_clip_default_inbounds", "test_clip_default_inbounds_expanded",
)
_CLIP = ("", "_example", "_inbounds", "_outbounds", "_splitbounds", "_min_greater_than_max",
         "_default_min", "_default_max")


def _out_of_scope(names) -> dict[str, str]:
    """Why each case outside IN_SCOPE is: by its name."""
    why = {}
    for n in names:
        if n in IN_SCOPE:
            continue
        if "float16" in n or "int8" in n:
            why[n] = "a dtype other than float32/float64"
        elif n.removeprefix("test_clip").removesuffix("_expanded") in _CLIP:
            why[n] = "Clip bounds fed at run time (lincompile takes constant bounds)"
        elif n in ("test_selu", "test_selu_example"):
            why[n] = "Selu with alpha and gamma other than torch's"
        else:
            why[n] = "function expansion into ops outside lincompile's vocabulary (CastLike...)"
    return why


@functools.cache
def node_cases() -> dict:
    import re
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in load_model_tests(kind="node") if re.match(FAMILY, c.name)}


@pytest.mark.parametrize("name", IN_SCOPE)
def test_onnx_node_case(name, target):
    from test_onnx_conformance import run_case

    run_case(node_cases()[name], target)


def test_onnx_node_cases_out_of_scope_are_rejected_clearly():
    why = _out_of_scope(node_cases())
    assert set(IN_SCOPE) <= set(node_cases()) and len(why) == len(node_cases()) - len(IN_SCOPE)
    for name in sorted(why):
        with pytest.raises(lc.LincompileError) as e:
            lc.load_onnx(node_cases()[name].model)
        assert "\n" not in str(e.value), name
