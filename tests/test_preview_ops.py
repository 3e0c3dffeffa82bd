"""ONNX's ``ai.onnx.preview.training`` ops (Adagrad, Momentum, Adam, Gradient) in lincompile.

Oracles: ONNX's own backend test cases and its reference implementation of the optimizers
(``onnx.reference``, with update counts T > 0 and every attribute set), central finite
differences for ``Gradient``, torch.optim.Adagrad for ``lc.Adagrad``. ``lincompile lower``'s
files run in stock onnxruntime against the same expectations.
"""

from __future__ import annotations

import functools
import glob
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import mlp, teacher_data, torch_mlp
from onnx import TensorProto, helper, numpy_helper

import lincompile as lc
from lincompile.lower import lower_model
from lincompile.ops.preview import DOMAIN

CASES = ("test_adagrad", "test_adagrad_multiple", "test_momentum", "test_momentum_multiple",
         "test_nesterov_momentum", "test_adam", "test_adam_multiple")
RTOL, ATOL = 1e-5, 1e-7


@functools.cache
def node_cases() -> dict:
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():  # onnx's case generators warn about overflow in casts
        warnings.simplefilter("ignore")
        return {c.name: c for c in load_model_tests(kind="node") if c.name in CASES}


def _read_pb(path: str) -> np.ndarray:
    t = TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


@functools.cache
def gradient_cases() -> dict:
    """ONNX's two Gradient model cases (Add; Add and Mul): model and data sets from disk."""
    from onnx.backend.test.loader import load_model_tests

    out = {}
    for c in load_model_tests(kind="simple"):
        if c.name.startswith("test_gradient_"):
            sets = []
            for d in sorted(glob.glob(os.path.join(c.model_dir, "test_data_set_*"))):
                sets.append(([_read_pb(p) for p in sorted(glob.glob(f"{d}/input_*.pb"))],
                             [_read_pb(p) for p in sorted(glob.glob(f"{d}/output_*.pb"))]))
            out[c.name] = (onnx.load(os.path.join(c.model_dir, "model.onnx")), sets)
    return out


def run_sets(model: onnx.ModelProto, sets, run) -> None:
    names = [v.name for v in model.graph.input]
    for inputs, expected in sets:
        out = run(dict(zip(names, inputs)))
        for vi, want in zip(model.graph.output, expected):
            got = out[vi.name]
            assert got.dtype == want.dtype and got.shape == want.shape, vi.name
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=vi.name)


def ort_run(model: onnx.ModelProto):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


# ----------------------------------------------------------------- ONNX's own cases
@pytest.mark.parametrize("name", CASES)
def test_onnx_backend_case(name, target):
    case = node_cases()[name]
    run_sets(case.model, case.data_sets, lc.compile(lc.load_onnx(case.model), target).run)


@pytest.mark.parametrize("name", CASES)
def test_lowered_case_runs_in_onnxruntime(name):
    case = node_cases()[name]
    low = lower_model(case.model)
    assert {n.domain for n in low.graph.node} == {""}
    assert [o.domain for o in low.opset_import] == [""]
    run_sets(case.model, case.data_sets, ort_run(low))


@pytest.mark.parametrize("name", ["test_gradient_of_add", "test_gradient_of_add_and_mul"])
def test_onnx_gradient_case(name, target):
    model, sets = gradient_cases()[name]
    run_sets(model, sets, lc.compile(lc.load_onnx(model), target).run)
    if target == "reference":
        run_sets(model, sets, ort_run(lower_model(model)))


# --------------------------------------------- the optimizers against onnx.reference
ORACLE = {  # name -> (ONNX op, states per tensor, attributes: every one, off its default)
    "adagrad": ("Adagrad", 1, {"norm_coefficient": 0.01, "decay_factor": 0.1,
                               "epsilon": 1e-4}),
    "momentum": ("Momentum", 1, {"norm_coefficient": 0.02, "alpha": 0.9, "beta": 0.7,
                                 "mode": "standard"}),
    "nesterov": ("Momentum", 1, {"norm_coefficient": 0.02, "alpha": 0.8, "beta": 0.6,
                                 "mode": "nesterov"}),
    "adam": ("Adam", 2, {"norm_coefficient": 0.01, "norm_coefficient_post": 0.02,
                         "alpha": 0.8, "beta": 0.95, "epsilon": 1e-4}),
}
SHAPES = [(3,), (2, 4)]


def optimizer_model(op: str, states: int, attrs: dict) -> onnx.ModelProto:
    """One node updating two tensors: R, T, X1, X2, G1, G2, then each state's S1, S2."""
    kinds = ["X", "G", *(f"S{k}_" for k in range(states))]
    tensors = [f"{k}{i}" for k in kinds for i in (1, 2)]
    outs = [f"{k}{i}_new" for k in ["X", *kinds[2:]] for i in (1, 2)]
    node = helper.make_node(op, ["R", "T", *tensors], outs, domain=DOMAIN, **attrs)
    vi = lambda n, t, s: helper.make_tensor_value_info(n, t, s)
    shape = lambda name: list(SHAPES[int(name[-1]) - 1])
    graph = helper.make_graph(
        [node], op, [vi("R", TensorProto.FLOAT, []), vi("T", TensorProto.INT64, [])]
        + [vi(t, TensorProto.FLOAT, shape(t)) for t in tensors],
        [vi(o, TensorProto.FLOAT, shape(o[:-4])) for o in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(DOMAIN, 1)])


def optimizer_feeds(model: onnx.ModelProto, t: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {"R": np.array(0.05, np.float32), "T": np.array(t, np.int64)}
    for vi in model.graph.input[2:]:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        a = rng.standard_normal(shape).astype(np.float32)
        # the accumulated squares (Adagrad's H, Adam's second state) are ≥ 0
        last = vi.name.startswith("S0_") if model.graph.node[0].op_type == "Adagrad" else \
            vi.name.startswith("S1_")
        feeds[vi.name] = np.abs(a) if last else a
    return feeds


@pytest.mark.parametrize("t", [0, 3])
@pytest.mark.parametrize("case", sorted(ORACLE))
def test_optimizer_matches_onnx_reference_implementation(case, t, target):
    from onnx.reference import ReferenceEvaluator

    model = optimizer_model(*ORACLE[case])
    feeds = optimizer_feeds(model, t)
    names = [o.name for o in model.graph.output]
    want = dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))
    got = lc.compile(lc.load_onnx(model), target).run(feeds)
    for k in names:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)
    if target == "reference":   # the lowered file in stock onnxruntime, too
        low = ort_run(lower_model(model))(feeds)
        for k in names:
            np.testing.assert_allclose(low[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_multi_tensor_node_imports_as_one_node_per_tensor():
    g = lc.load_onnx(optimizer_model(*ORACLE["adam"]))
    assert [n.op for n in g.nodes] == ["onnx_adam", "onnx_adam"]
    assert [v.name for v in g.nodes[1].outputs] == ["X2_new", "S0_2_new", "S1_2_new"]
    assert g.nodes[0].attrs == {"norm_coefficient": 0.01, "norm_coefficient_post": 0.02,
                                "alpha": 0.8, "beta": 0.95, "epsilon": 1e-4}


def test_spec_defaults_apply_and_missing_attributes_are_refused():
    m = optimizer_model("Adam", 2, {})
    assert lc.load_onnx(m).nodes[0].attrs == {
        "norm_coefficient": 0.0, "norm_coefficient_post": 0.0, "alpha": 0.9, "beta": 0.999,
        "epsilon": 1e-6}
    with pytest.raises(lc.LincompileError, match="attribute 'alpha' is "):
        lc.load_onnx(optimizer_model("Momentum", 1, {"beta": 1.0, "mode": "standard",
                                                     "norm_coefficient": 0.0}))
    bad = optimizer_model("Momentum", 1, {**ORACLE["momentum"][2], "mode": "heavy"})
    with pytest.raises(lc.UnsupportedOpError, match="mode 'heavy'"):
        lc.load_onnx(bad)


@pytest.mark.parametrize("case", sorted(ORACLE))
def test_default_and_portable_export_read_back(tmp_path, case):
    g = lc.load_onnx(optimizer_model(*ORACLE[case]))
    feeds = optimizer_feeds(optimizer_model(*ORACLE[case]), 2)
    want = lc.compile(g, "reference").run(feeds)
    for portable in (False, True):
        back = lc.load_onnx(lc.save_onnx(g, tmp_path / f"{portable}.onnx", portable=portable))
        assert [n.op for n in back.nodes] == [n.op for n in g.nodes]
        got = lc.compile(back, "reference").run(feeds)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ------------------------------------------------------------------------ Gradient
def gemm_training_model() -> onnx.ModelProto:
    """The operator doc's loop: Y = X·Wᵀ + B, loss = Σ (Y − L)², Gradient of the loss
    with respect to W and B (zs: X, L), Momentum on both."""
    f, i = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Gemm", ["X", "W", "B"], ["Y"], name="gemm", transB=1),
        helper.make_node("Sub", ["Y", "L"], ["D"], name="diff"),
        helper.make_node("Mul", ["D", "D"], ["S"], name="square"),
        helper.make_node("ReduceSum", ["S"], ["loss"], name="sum", keepdims=0),
        helper.make_node("Gradient", ["W", "B", "X", "L"], ["dW", "dB"], name="grad",
                         domain=DOMAIN, xs=["W", "B"], zs=["X", "L"], y="loss"),
        helper.make_node("Momentum", ["R", "T", "W", "B", "dW", "dB", "VW", "VB"],
                         ["W_new", "B_new", "VW_new", "VB_new"], name="update", domain=DOMAIN,
                         alpha=0.9, beta=0.5, mode="standard", norm_coefficient=0.01),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "gemm_loop",
        [vi("X", f, ["N", 4]), vi("L", f, ["N", 3]), vi("W", f, [3, 4]), vi("B", f, [3]),
         vi("VW", f, [3, 4]), vi("VB", f, [3]), vi("R", f, []), vi("T", i, [])],
        [vi("loss", f, []), vi("W_new", f, [3, 4]), vi("B_new", f, [3]),
         vi("VW_new", f, [3, 4]), vi("VB_new", f, [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(DOMAIN, 1)])


def central_differences(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        out[i] = (f(xp) - f(xm)) / (2 * h)
    return out


def test_gemm_gradient_momentum_loop_matches_finite_differences(target):
    rng = np.random.default_rng(3)
    x, lab = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    w, b = rng.standard_normal((3, 4)) * 0.5, rng.standard_normal(3) * 0.5
    loss = lambda w, b: float((((x @ w.T + b) - lab) ** 2).sum())
    state = {"W": w, "B": b, "VW": np.zeros_like(w), "VB": np.zeros_like(b)}
    model = gemm_training_model()
    runs = {"lincompile": lc.compile(lc.load_onnx(model), target).run}
    if target == "reference":
        runs["lowered, onnxruntime"] = ort_run(lower_model(model))
    got_state = {k: {n: v.astype(np.float32) for n, v in state.items()} for k in runs}
    for step in range(3):
        # the expected step in float64: gradients by central differences, Momentum by spec
        gw = central_differences(lambda v: loss(v, state["B"]), state["W"])
        gb = central_differences(lambda v: loss(state["W"], v), state["B"])
        want = {"loss": loss(state["W"], state["B"])}
        for p, g, v in (("W", gw, "VW"), ("B", gb, "VB")):
            g = 0.01 * state[p] + g
            want[f"{v}_new"] = 0.9 * state[v] + (0.5 if step > 0 else 1) * g
            want[f"{p}_new"] = state[p] - 0.01 * want[f"{v}_new"]
        state = {k: want[f"{k}_new"] for k in state}
        for what, run in runs.items():
            feeds = {"X": x.astype(np.float32), "L": lab.astype(np.float32),
                     "R": np.array(0.01, np.float32), "T": np.array(step, np.int64),
                     **got_state[what]}
            out = run(feeds)
            for k, v in want.items():
                np.testing.assert_allclose(out[k], v, rtol=2e-5, atol=1e-5,
                                           err_msg=f"{what}, step {step + 1}: {k}")
            got_state[what] = {k: out[f"{k}_new"] for k in state}


def gradient_model(nodes, inputs, outputs) -> onnx.ModelProto:
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
    graph = helper.make_graph(nodes, "g", [vi(n, s) for n, s in inputs],
                              [vi(n, s) for n, s in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(DOMAIN, 1)])


def test_gradient_at_fed_values_of_an_intermediate_tensor(target):
    """Gradient(xs=[H]) fed H1 instead of H: dY/dH at H = H1, with Y = Σ tanh(H)·Z."""
    nodes = [helper.make_node("Gemm", ["X", "W"], ["H"], transB=1),
             helper.make_node("Tanh", ["H"], ["T"]),
             helper.make_node("Mul", ["T", "Z"], ["P"]),
             helper.make_node("ReduceSum", ["P"], ["Y"], keepdims=0),
             helper.make_node("Gradient", ["H1", "Z"], ["dH"], domain=DOMAIN, xs=["H"],
                              zs=["Z"], y="Y")]
    model = gradient_model(nodes, [("X", [2, 3]), ("W", [4, 3]), ("Z", [2, 4]),
                                   ("H1", [2, 4])], [("Y", []), ("dH", [2, 4])])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in (("X", (2, 3)), ("W", (4, 3)), ("Z", (2, 4)), ("H1", (2, 4)))}
    z = feeds["Z"].astype(np.float64)
    want = central_differences(lambda h: float((np.tanh(h) * z).sum()),
                               feeds["H1"].astype(np.float64))
    for run in [lc.compile(lc.load_onnx(model), target).run] + (
            [ort_run(lower_model(model))] if target == "reference" else []):
        np.testing.assert_allclose(run(feeds)["dH"], want, rtol=1e-5, atol=1e-6)


def test_gradient_of_a_tensor_is_that_of_the_sum_of_its_elements():
    nodes = [helper.make_node("Mul", ["A", "B"], ["C"]),
             helper.make_node("Gradient", ["A"], ["dA"], domain=DOMAIN, xs=["A"], y="C")]
    model = gradient_model(nodes, [("A", [2, 3]), ("B", [2, 3])], [("dA", [2, 3])])
    feeds = {"A": np.ones((2, 3), np.float32), "B": np.arange(6, dtype=np.float32).reshape(2, 3)}
    got = lc.compile(lc.load_onnx(model), "reference").run(feeds)["dA"]
    np.testing.assert_array_equal(got, feeds["B"])


def test_gradient_errors_name_the_node():
    nodes = [helper.make_node("Gradient", ["A"], ["dA"], name="g", domain=DOMAIN, xs=["A"],
                              y="C"),
             helper.make_node("Mul", ["A", "A"], ["C"])]
    with pytest.raises(lc.UnsupportedOpError, match="'g'.*y 'C' must be computed before"):
        lc.load_onnx(gradient_model(nodes, [("A", [2])], [("dA", [2])]))
    nodes = [helper.make_node("Mul", ["A", "A"], ["C"]),
             helper.make_node("Gradient", ["A", "A"], ["dA"], name="g", domain=DOMAIN,
                              xs=["A"], y="C")]
    with pytest.raises(lc.UnsupportedOpError, match="values of xs then zs"):
        lc.load_onnx(gradient_model(nodes, [("A", [2])], [("dA", [2])]))


# -------------------------------------------------------------- lc.Adagrad vs torch
ADAGRAD = {
    "default": ({"lr": 0.1}, {"lr": 0.1}),
    "all": ({"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.02,
             "initial_accumulator_value": 0.1, "eps": 1e-6},
            {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.02,
             "initial_accumulator_value": 0.1, "eps": 1e-6}),
}


@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
@pytest.mark.parametrize("config", sorted(ADAGRAD))
def test_adagrad_three_steps_match_torch(config, loss, target):
    torch = pytest.importorskip("torch")
    ours, theirs = ADAGRAD[config]
    act = "tanh" if loss == "mse" else "relu"
    m = mlp((8, 6, 3), act=act, seed=4)
    t = lc.training_graph(m, loss=loss, optimizer=lc.Adagrad(**ours))
    exe = lc.compile(t, target)
    model = torch_mlp(m, act)
    params = dict(zip(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], model.parameters()))
    opt = torch.optim.Adagrad(model.parameters(), **theirs)
    crit = torch.nn.CrossEntropyLoss() if loss == "cross-entropy" else torch.nn.MSELoss()
    state = dict(t.initial_state)
    for i in range(3):
        x, y = teacher_data(16, 8, 3, seed=5 + i)
        tgt = y if loss == "cross-entropy" else np.eye(3, dtype=np.float32)[y]
        out = exe.run({"x": x, "target": tgt, "lr": np.float32(ours["lr"]), **state})
        opt.zero_grad()
        value = crit(model(torch.from_numpy(x)), torch.from_numpy(tgt))
        value.backward()
        opt.step()
        np.testing.assert_allclose(out["loss"], value.item(), rtol=1e-5)
        for k, p in params.items():
            np.testing.assert_allclose(out[f"{k}.next"], p.detach().numpy(), rtol=2e-5,
                                       atol=2e-7, err_msg=k)
            np.testing.assert_allclose(out[f"{k}.sum.next"], opt.state[p]["sum"].numpy(),
                                       rtol=2e-5, atol=2e-7, err_msg=f"{k}.sum")
        state = {k: out[f"{k}.next"] for k in state}
    assert state["step"] == 3


def test_adagrad_state_starts_at_the_initial_accumulator_value():
    t = lc.training_graph(mlp((4, 3)), optimizer=lc.Adagrad(initial_accumulator_value=0.25))
    assert [v.name for v in t.inputs] == ["x", "target", "fc1.weight", "fc1.weight.sum",
                                          "fc1.bias", "fc1.bias.sum", "step", "lr"]
    assert np.all(t.initial_state["fc1.weight.sum"] == 0.25)
    assert t.initial_state["step"] == 0


# ------------------------------------------------------------------------ the CLI
def test_cli_export_training_with_adagrad(tmp_path, capsys):
    from lincompile.cli import main

    src = lc.save_onnx(mlp((6, 5, 3)), tmp_path / "m.onnx")
    out = tmp_path / "t.onnx"
    assert main(["export-training", str(src), "-o", str(out), "--loss", "mse", "--optimizer",
                 "adagrad", "--lr", "0.05", "--lr-decay", "0.01",
                 "--initial-accumulator-value", "0.1", "--eps", "1e-8"]) == 0
    assert "P.sum at 0.1" in capsys.readouterr().out
    t = lc.load_onnx(out)
    assert {n.op for n in t.nodes} >= {"adagrad"}
    assert next(n for n in t.nodes if n.op == "adagrad").attrs == {
        "lr_decay": 0.01, "weight_decay": 0.0, "eps": 1e-8}
    assert main(["info", str(out)]) == 0
    assert "optimizer state (5): fc1.weight.sum" in capsys.readouterr().out
    assert main(["export-training", str(src), "-o", str(out), "--loss", "mse", "--optimizer",
                 "sgd", "--lr-decay", "0.1"]) == 2
    assert "--lr-decay does not apply to --optimizer sgd" in capsys.readouterr().err


def test_cli_lower(tmp_path, capsys):
    from lincompile.cli import main

    src = tmp_path / "loop.onnx"
    onnx.save_model(gemm_training_model(), src)
    out = tmp_path / "loop_std.onnx"
    assert main(["lower", str(src), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 ai.onnx.preview.training node(s)" in said and "Momentum ×1" in said
    low = onnx.load(out)
    onnx.checker.check_model(low, full_check=True)
    assert {n.domain for n in low.graph.node} == {""}
    # every other node as it was, the Gradient reading the forward tensors of the graph
    original = [n for n in gemm_training_model().graph.node if n.domain == ""]
    assert [n.SerializeToString() for n in low.graph.node[:4]] == \
        [n.SerializeToString() for n in original]
    assert sum(n.op_type == "Gemm" and n.output[0] == "Y" for n in low.graph.node) == 1
    assert not any(n.op_type == "Gemm" and "X" in n.input[:1] for n in low.graph.node[4:])
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    before = src.read_bytes()
    assert main(["lower", str(src), "-o", str(src)]) == 2
    assert "never writes over its input" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert main(["lower", str(tmp_path / "nope.onnx"), "-o", str(out)]) == 2


def test_lower_refuses_a_gradient_of_a_tensor_computed_after_it():
    nodes = [helper.make_node("Gradient", ["A"], ["dA"], name="g", domain=DOMAIN, xs=["A"],
                              y="C"),
             helper.make_node("Mul", ["A", "A"], ["C"])]
    with pytest.raises(lc.LincompileError, match="'g': its y 'C' is computed after it"):
        lower_model(gradient_model(nodes, [("A", [2])], [("dA", [2])]))
