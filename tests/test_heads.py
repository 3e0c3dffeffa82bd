"""Classifier heads: which tensor is trained as the logits, what is left out, and the two-class
sigmoid head trained as softmax over [0, z].

Oracles: onnxruntime on the original file (the logits it computes), and float64 numpy for the
binary cross-entropy of z.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import ort_run

import lincompile as lc
from lincompile.frontends.heads import find_head
from lincompile.frontends.layout import start_state

RNG = np.random.default_rng(5)
F = TensorProto.FLOAT


def chain(tail: list, outputs: list, extra: dict | None = None, opset: int = 18):
    """x [N, 4] → Gemm fc1 → Relu → Gemm fc2 = 'z' [N, 3], then ``tail`` nodes."""
    rng = np.random.default_rng(0)  # the same weights in every variant
    w = {"fc1.weight": rng.standard_normal((5, 4)).astype(np.float32),
         "fc2.weight": rng.standard_normal((3, 5)).astype(np.float32), **(extra or {})}
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight"], ["a"], transB=1, name="fc1"),
             helper.make_node("Relu", ["a"], ["h"], name="relu"),
             helper.make_node("Gemm", ["h", "fc2.weight"], ["z"], transB=1, name="fc2"), *tail]
    vi = lambda n, t=F, s=("N", 3): helper.make_tensor_value_info(n, t, s)
    g = helper.make_graph(nodes, "m", [vi("x", F, ["N", 4])], [vi(*o) for o in outputs],
                          [numpy_helper.from_array(a, k) for k, a in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("tail, outputs, kind, left_out", [
    ([helper.make_node("Softmax", ["z"], ["p"], axis=-1)], [("p",)], "softmax", ["Softmax"]),
    ([helper.make_node("LogSoftmax", ["z"], ["p"], axis=1)], [("p",)], "log_softmax",
     ["LogSoftmax"]),
    ([helper.make_node("Identity", ["z"], ["zc"]), helper.make_node("Softmax", ["zc"], ["p"])],
     [("p",)], "softmax", ["Identity", "Softmax"]),  # Keras: a float Cast/copy before it
    ([helper.make_node("Softmax", ["z"], ["p"]),
      helper.make_node("ArgMax", ["p"], ["label"], axis=1)],
     [("z",), ("p",), ("label", TensorProto.INT64, ["N", 1])],
     "softmax", ["Softmax", "ArgMax"]),  # the logits are an output too
])
def test_head_is_found_and_cut(tail, outputs, kind, left_out):
    m = chain(tail, outputs)
    head = find_head(m)
    assert head is not None and head.logits == "z" and head.kind == kind
    assert head.nodes == left_out
    g = lc.load_onnx(m)
    assert [v.name for v in g.outputs] == ["z"] and [n.op for n in g.nodes] == ["linear",
                                                                                "relu", "linear"]
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    want = ort_run(chain([], [("z",)]), {"x": x})["z"]
    np.testing.assert_allclose(lc.compile(g, "reference").run({"x": x})["z"], want, rtol=1e-5)
    assert json.loads(g.meta["lincompile.head"])["kind"] == kind


@pytest.mark.parametrize("tail, outputs", [
    ([], [("z",)]),  # no head at all
    ([helper.make_node("Reshape", ["z", "shape"], ["y"])], [("y",)]),  # a final Reshape
    ([helper.make_node("Softmax", ["z"], ["p"], axis=0)], [("p",)]),  # not over the classes
    ([helper.make_node("Softmax", ["z"], ["p"]), helper.make_node("Relu", ["h"], ["r"])],
     [("p",), ("r", F, ["N", 5])]),  # another output from elsewhere
])
def test_no_head_where_the_outputs_are_not_a_classifiers(tail, outputs):
    m = chain(tail, outputs, {"shape": np.array([-1, 3], np.int64)})
    assert find_head(m) is None


@pytest.mark.parametrize("target, stacked", [([-1, 1], True), ([-1], True), ([-1, 3], False),
                                             ([0, 3], False)])
def test_a_regression_output_stacking_its_rows_is_fitted_before_the_reshape(target, stacked):
    """skl2onnx's MLPRegressor ends in Reshape [-1, 1] whatever its number of outputs: [N, 3]
    becomes [3N, 1], a batch dim merged with others. The tensor before it is what is fitted
    (one row of 3 targets per example); a Reshape keeping the rows is imported as it is."""
    out = ("y", F, [None, 1] if target == [-1, 1] else [None] if target == [-1] else ["N", 3])
    m = chain([helper.make_node("Reshape", ["z", "shape"], ["y"])], [out],
              {"shape": np.array(target, np.int64)})
    head = find_head(m)
    if not stacked:
        assert head is None and [v.name for v in lc.load_onnx(m).outputs] == ["y"]
        return
    assert head is not None and (head.logits, head.kind, head.nodes, head.outputs) == \
        ("z", "none", ["Reshape"], ["y"])
    g = lc.load_onnx(m)
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    want = ort_run(m, {"x": x})["y"]   # the file's own output: the rows stacked
    got = lc.compile(g, "reference").run({"x": x})["z"]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5)
    lc.training_graph(g, loss="mse", optimizer=lc.SGD())   # fitted as [N, 3] by mse
    # one value per row: stacking changes no shape that matters, the output stays the file's
    one = chain([helper.make_node("ReduceSum", ["z", "axes"], ["z1"], keepdims=1),
                 helper.make_node("Reshape", ["z1", "shape"], ["y"])], [out],
                {"shape": np.array(target, np.int64), "axes": np.array([1], np.int64)})
    assert find_head(one) is None


def test_logits_by_name_and_a_name_that_is_no_tensor():
    m = chain([helper.make_node("Softmax", ["z"], ["p"])], [("p",)])
    g = lc.load_onnx(m, logits="h")
    assert [v.name for v in g.outputs] == ["h"] and set(g.params) == {"fc1.weight"}
    assert json.loads(g.meta["lincompile.head"])["kind"] == "none"
    train = lc.training_graph(g, loss="mse", optimizer=lc.SGD())  # a tensor chosen by name
    assert "lincompile.logits" not in train.meta
    for bad, what in (("nope", "no tensor"), ("x", "an input or a constant")):
        with pytest.raises(lc.LincompileError, match=f"logits '{bad}': {what} of the model"):
            lc.load_onnx(m, logits=bad)


def test_mse_on_a_model_with_a_head_is_refused():
    g = lc.load_onnx(chain([helper.make_node("Softmax", ["z"], ["p"])], [("p",)]))
    with pytest.raises(lc.LincompileError, match="softmax classifier head.*after its logits "
                                                 "'z'.*--logits NAME"):
        lc.training_graph(g, loss="mse", optimizer=lc.SGD())


def binary_model() -> onnx.ModelProto:
    """skl2onnx's two-class head: z [N, 1], p = σ(z), probabilities [1 − p, p]."""
    w = RNG.standard_normal((4, 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]),
             helper.make_node("Sub", ["one", "p"], ["q"]),
             helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1)]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "b", [vi("x", F, ["N", 4])], [vi("probabilities", F, ["N", 2])],
                          [numpy_helper.from_array(w, "W"),
                           numpy_helper.from_array(np.array(1, np.float32), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def test_two_class_sigmoid_head_trains_the_binary_cross_entropy_of_z():
    m = binary_model()
    g = lc.load_onnx(m)
    assert json.loads(g.meta["lincompile.head"])["kind"] == "sigmoid"
    train = lc.training_graph(g, loss="cross-entropy", optimizer=lc.SGD(0.1))
    assert train.meta["lincompile.logits"] == "z"
    x = RNG.standard_normal((7, 4)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0, 0])
    z = (x.astype(np.float64) @ numpy_helper.to_array(m.graph.initializer[0]).astype(
        np.float64))[:, 0]
    bce = np.mean(np.logaddexp(0, z) - y * z)  # −y log σ(z) − (1 − y) log(1 − σ(z))
    grad = x.T.astype(np.float64) @ (1 / (1 + np.exp(-z)) - y) / len(y)  # ∂bce/∂W [4]
    for t in ("reference", "onnx", "c"):
        out = lc.compile(train, t).run({"x": x, "target": y, **start_state(train)})
        np.testing.assert_allclose(out["loss"], bce, rtol=1e-5, err_msg=t)
        np.testing.assert_allclose(out["W.next"], train.initial_state["W"] - 0.1 * grad[None],
                                   rtol=1e-5, atol=1e-7, err_msg=t)


def test_one_logit_without_a_sigmoid_head_is_refused():
    m = binary_model()
    del m.graph.node[1:]
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("z", F, ["N", 1]))
    with pytest.raises(lc.LincompileError, match="'z' \\[N, 1\\] is one logit.*--loss mse"):
        lc.training_graph(lc.load_onnx(m), loss="cross-entropy", optimizer=lc.SGD())


# ------------------------------------------------- one column of sigmoid probabilities
def _binary_module():
    import torch

    class Binary(torch.nn.Module):   # torch's usual binary classifier: σ(z), one column
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(4, 6), torch.nn.Linear(6, 1)

        def forward(self, x):
            return torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))

    torch.manual_seed(3)
    return Binary()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_sigmoid_probability_output_trains_as_binary_cross_entropy(exporter, tmp_path,
                                                                     capsys):
    """torch's ``nn.Sigmoid`` (Keras's sigmoid activation) ending a one-column binary
    classifier: the model still computes the probabilities, cross-entropy trains them as
    ``nn.BCELoss`` does (the binary cross-entropy of the logit before the sigmoid), and
    ``lincompile train`` writes a copy that gives what torch's model gives after the same
    steps. Oracle: torch, taking the same optimizer steps."""
    torch = pytest.importorskip("torch")
    from conftest import TARGETS as ALL
    from helpers import export_torch

    from lincompile.cli import main

    module = _binary_module()
    x = RNG.standard_normal((16, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)
    path = export_torch(module, torch.from_numpy(x[:2]), tmp_path / "binary.onnx", exporter)
    g = lc.load_onnx(path)
    assert "lincompile.head" not in g.meta   # nothing left out: the file's own output
    want = module(torch.from_numpy(x)).detach().numpy()
    opt = torch.optim.SGD(module.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(module(torch.from_numpy(x))[:, 0],
                                                        torch.from_numpy(y).float())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = {k: v.detach().numpy() for k, v in module.named_parameters()}
    train = lc.training_graph(g, "cross-entropy", lc.SGD(0.5, momentum=0.9))
    assert "sigmoid" not in [n.op for n in train.nodes if n.op != "sigmoid_grad"]
    for target in ALL:
        got = lc.compile(g, target).run({"x": x})[g.outputs[0].name]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=target)
        step, state = lc.compile(train, target), start_state(train)
        for lv in losses:
            out = step.run({"x": x, "target": y, **state})
            assert abs(float(out["loss"]) - lv) <= 1e-4 * max(1, abs(lv)), (target, lv)
            state = {k: out.get(f"{k}.next", v) for k, v in state.items()}
        for k, w in final.items():
            assert np.abs(state[k] - w).max() <= 1e-4, (target, k)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out = tmp_path / "trained.onnx"
    assert main(["train", str(path), "--data", str(tmp_path / "data.npz"), "-o", str(out),
                 "--loss", "cross-entropy", "--optimizer", "sgd", "--lr", "0.5", "--momentum",
                 "0.9", "--epochs", "3", "--batch-size", "16", "--val-split", "0"]) == 0
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(onnx.load(out), {"x": x})[g.outputs[0].name],
                                   module(torch.from_numpy(x)).numpy(), atol=1e-5)
    np.savez(tmp_path / "bad.npz", x=x, y=np.where(y == 1, 2, 0))   # labels 0 and 2
    assert main(["train", str(path), "--data", str(tmp_path / "bad.npz"), "-o",
                 str(tmp_path / "t2.onnx"), "--loss", "cross-entropy", "--optimizer",
                 "sgd"]) != 0
    assert "label 2 is not a class of the model (classes: 0..1)" in capsys.readouterr().err
    lc.training_graph(g, "mse", lc.SGD())   # mse still fits the probabilities themselves
