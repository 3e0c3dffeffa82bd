"""Concatenation along the last axis (``concat``, ONNX ``Concat``; its gradient is
``slice_last``, ONNX ``Slice``): the join of a multi-branch MLP, ``torch.cat([relu(a(x)),
tanh(b(x))], dim=1)``, against central differences, the float64 reference on every target,
torch through both exporters, and nvcc."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import COMPILED, TARGETS
from helpers import assert_trains_like_torch, export_torch
from test_ops import central_differences

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable


def branches(seed: int = 0) -> lc.Graph:
    """Linear → [ReLU branch of 3, Tanh branch of 5] → concat → Linear."""
    g = lc.Graph("branches", seed=seed)
    x = g.input("x", ["N", 4])
    h = g.linear(x, 6, name="fc")
    a, b = g.relu(g.linear(h, 3, name="a")), g.tanh(g.linear(h, 5, name="b"))
    g.output(g.linear(g.concat([a, b]), 2, name="out"))
    return g.verify()


def test_gradient_of_the_branches_matches_central_differences():
    g = lc.Graph("fd")
    x = g.input("x", ["N", 4])
    w = {k: g.input(k, s) for k, s in (("wa", [3, 4]), ("ba", [3]), ("wb", [5, 4]),
                                        ("wo", [2, 12]))}
    a = g.relu(g.apply("linear", [x, w["wa"], w["ba"]]))
    b = g.tanh(g.apply("linear", [x, w["wb"]]))
    y = g.apply("linear", [g.concat([a, x, b]), w["wo"]])   # widths 3, 4, 5
    r = g.input("r", y.shape)
    g.output(g.reduce_sum(g.mul(y, r)), name="L")
    wrt = ["x", *w]
    gg = lc.grad(g, of="L", wrt=wrt)
    assert {"concat", "slice_last"} <= {n.op for n in gg.nodes}
    feeds = lc.random_feeds(gg, batch=3, seed=4)
    grads = ReferenceExecutable(gg, "float64").run(feeds)
    for k in wrt:
        fd = central_differences(g, feeds, k)
        err = np.linalg.norm(grads[f"{k}.grad"] - fd) / np.linalg.norm(fd)
        assert err <= 1e-6, f"d/d{k}: relative error {err:.2e}"


@pytest.mark.parametrize("target", COMPILED)
def test_training_step_on_every_target_matches_the_float64_reference(target):
    train = lc.training_graph(branches(), "mse", lc.SGD(0.1, momentum=0.9))
    for batch in (1, 5):
        report = lc.validate(train, ["reference", target], batch=batch, seed=batch)
        assert report.ok, f"{target}, batch {batch}:\n{report}"


def special_graph() -> lc.Graph:
    g = lc.Graph("special")
    y = g.concat([g.input("a", ["N", 3]), g.input("b", ["N", 2]), g.input("c", ["N", 1])])
    g.output(y, name="y")
    g.output(g.slice_last(y, 1, 4), name="mid")
    return g.verify()


@pytest.mark.parametrize("target", TARGETS)
def test_nan_inf_and_signed_zeros_pass_through_unchanged(target):
    inf, nan = np.inf, np.nan
    a = np.array([[nan, inf, -inf], [-0.0, 1.5, nan]], np.float32)
    b = np.array([[-0.0, nan], [inf, -2.0]], np.float32)
    c = np.array([[-inf], [nan]], np.float32)
    want = np.concatenate([a, b, c], axis=1)
    got = lc.compile(special_graph(), target).run({"a": a, "b": b, "c": c})
    for k, w in (("y", want), ("mid", want[:, 1:4])):
        np.testing.assert_array_equal(got[k], w)
        assert np.array_equal(np.signbit(got[k]), np.signbit(w)), (target, k)


def test_only_the_last_axis_is_concatenated():
    g = lc.Graph("bad")
    a, b = g.input("a", ["N", 3]), g.input("b", ["N", 3])
    with pytest.raises(lc.ShapeError, match="only the last axis"):
        g.concat([a, b], axis=0)
    with pytest.raises(lc.ShapeError, match="all dims but the last must match"):
        g.concat([a, g.input("c", [2, 3, 3])])
    with pytest.raises(lc.ShapeError, match="takes inputs"):
        g.concat([a])


def torch_model(torch):
    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = torch.nn.Linear(6, 5), torch.nn.Linear(7, 2)
            self.a, self.b = torch.nn.Linear(5, 4), torch.nn.Linear(5, 3)

        def forward(self, x):
            h = self.fc(x)
            return self.out(torch.cat([torch.relu(self.a(h)), torch.tanh(self.b(h))], dim=1))

    torch.manual_seed(0)
    return Branches().eval()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_export_imports_and_trains_like_torch(exporter, tmp_path):
    torch = pytest.importorskip("torch", reason="the model and the oracle")
    m = torch_model(torch)
    g = lc.load_onnx(export_torch(m, torch.rand(4, 6), tmp_path / "branches.onnx", exporter))
    assert "concat" in {n.op for n in g.nodes}
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((n, 6)).astype(np.float32),
                rng.standard_normal((n, 2)).astype(np.float32)) for n in (5, 3, 4)]
    assert_trains_like_torch(m, g, batches, TARGETS)


def test_model_and_training_graph_files_load_back(tmp_path):
    """What lincompile writes (Concat, and the Slice of the gradient) reads back as the same
    ops, in the default and the portable form."""
    g = branches()
    train = lc.training_graph(g, "mse", lc.SGD(0.1, momentum=0.9))
    for graph in (g, train):
        for portable in (False, True):
            path = tmp_path / f"{graph.name}_{portable}.onnx"
            lc.save_onnx(graph, path, portable=portable)
            back = lc.load_onnx(path)
            ops = sorted(n.op for n in back.nodes if n.op != "identity")
            assert ops == sorted(n.op for n in graph.nodes if n.op != "identity")


def test_nvcc_compiles_the_branches_training_step_for_sm80(tmp_path):
    from lincompile.backends import cuda
    from lincompile.backends.cuda_build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: cannot compile the generated CUDA on this machine")
    train = lc.training_graph(branches(), "mse", lc.SGD(0.1, momentum=0.9))
    src = cuda._CudaSource({"train": train}, "model", "sm_80", cuda.GPU_TILES)
    for name, text in src.files().items():
        (tmp_path / name).write_text(text)
    text = src.files()["model.cu"]
    kernels = re.findall(r"\b(k\d+_(?:concat|slice_last))\(", text)
    assert {k.split("_", 1)[1] for k in kernels} == {"concat", "slice_last"}
    res = subprocess.run([nvcc, *cuda.NVCC_FLAGS, "-arch=sm_80", "-Xcompiler", "-fPIC", "-c",
                          "model.cu", "-o", "model.o"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not any(k in res.stderr for k in kernels), res.stderr[-3000:]


def onnx_model(node, inits, y_width=4):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", y_width])
    graph = helper.make_graph([node], "m", [x], [y],
                              [numpy_helper.from_array(np.array(v, np.int64), k)
                               for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_slice_of_the_last_axis_imports_with_onnx_bounds():
    from onnx import helper

    node = helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])
    g = lc.load_onnx(onnx_model(node, {"s": [-4], "e": [2**63 - 1], "a": [1]}))
    (n,) = g.nodes
    assert (n.op, n.attrs) == ("slice_last", {"start": 2, "stop": 6})
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    for target in TARGETS:
        np.testing.assert_array_equal(lc.compile(g, target).run({"x": x})["y"], x[:, 2:])
    for inits, why in (({"s": [0], "e": [3], "a": [0]}, "only a Slice of the fixed last axis"),
                       ({"s": [0], "e": [3], "a": [1], "t": [2]}, "steps \\[2\\]")):
        ins = ["x", "s", "e", "a"] + (["t"] if "t" in inits else [])
        with pytest.raises(lc.UnsupportedOpError, match=why):
            lc.load_onnx(onnx_model(helper.make_node("Slice", ins, ["y"]), inits))


def test_concat_over_another_axis_is_refused_in_one_line():
    from onnx import helper

    node = helper.make_node("Concat", ["x", "x"], ["y"], axis=0)
    with pytest.raises(lc.UnsupportedOpError, match="only the last axis") as e:
        lc.load_onnx(onnx_model(node, {}))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("target", COMPILED)
def test_a_repeated_and_an_empty_input(target):
    """concat([a, e, a]) with e of width 0: a's gradient is the sum of its two slices."""
    g = lc.Graph("twice")
    a, e = g.input("a", ["N", 3]), g.input("e", ["N", 0])
    y = g.concat([a, e, a])
    g.output(g.reduce_sum(g.mul(g.tanh(y), g.input("r", ["N", 6]))), name="L")
    report = lc.validate(lc.grad(g, of="L", wrt=["a"]), ["reference", target], batch=3)
    assert report.ok, str(report)
