"""Reshape targets computed from the input's own shape (``Shape → Gather → Unsqueeze →
Concat → Reshape``), as Keras's ``Flatten`` and torch's ``x.view(x.size(0), -1)`` write them
with a symbolic batch: folded at import, checked against the producers and onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import TARGETS
from helpers import assert_trains_like_torch, export_torch
from onnx import TensorProto, helper
from onnx_models import model, ort_run

import lincompile as lc

RNG = np.random.default_rng(3)


def torch_net(torch, how: str):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(12, 5), torch.nn.Linear(5, 2)

        def forward(self, x):
            if how == "view":
                h = x.view(x.size(0), -1)
            else:   # the width from the other dims: x.size(1) · x.size(2)
                h = x.reshape(-1, x.shape[1] * x.shape[2])
            return self.fc2(torch.tanh(self.fc1(h)))

    torch.manual_seed(1)
    return Net().eval()


@pytest.mark.parametrize("how", ["view", "product"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_reshape_from_its_own_shape_imports_and_trains_like_torch(how, exporter,
                                                                         tmp_path):
    torch = pytest.importorskip("torch", reason="the model and the oracle")
    m = torch_net(torch, how)
    g = lc.load_onnx(export_torch(m, torch.rand(4, 3, 4), tmp_path / "v.onnx", exporter))
    assert g.nodes[0].op == "reshape"
    batches = [(RNG.standard_normal((n, 3, 4)).astype(np.float32),
                RNG.standard_normal((n, 2)).astype(np.float32)) for n in (5, 3, 4)]
    assert_trains_like_torch(m, g, batches, TARGETS)


def test_keras_flatten_matches_keras(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the producer")
    if keras.backend.backend() != "torch":
        pytest.skip("these tests export Keras through KERAS_BACKEND=torch")
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(),
                          keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)])
    x = RNG.standard_normal((5, 4, 4)).astype(np.float32)
    want = m(x).detach().cpu().numpy()
    m.export(str(tmp_path / "k.onnx"), format="onnx", verbose=False)
    g = lc.load_onnx(tmp_path / "k.onnx")
    for target in TARGETS:
        got = lc.compile(g, target).run({g.inputs[0].name: x})[g.outputs[0].name]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=target)


def shape_graph(nodes, inits, opset=18):
    n = helper.make_node
    head = [n("Shape", ["x"], ["s"], **({"start": 0, "end": 1} if opset >= 15 else {})),
            n("Gather", ["s", "zero"], ["n"], axis=0),
            n("Unsqueeze", ["n", "axis0"], ["n1"])]
    return model(head + nodes, [("x", ["N", 3, 4])], [("y", ["N", 12])],
                 {"zero": np.array(0, np.int64), "axis0": np.array([0], np.int64), **inits},
                 opset=opset)


def test_hand_written_shape_arithmetic_matches_onnxruntime():
    n = helper.make_node
    m = shape_graph([n("Mul", ["three", "four"], ["w"]), n("Unsqueeze", ["w", "axis0"], ["w1"]),
                     n("Concat", ["n1", "w1"], ["target"], axis=0),
                     n("Reshape", ["x", "target"], ["y"])],
                    {"three": np.array(3, np.int64), "four": np.array(4, np.int64)})
    x = RNG.standard_normal((6, 3, 4)).astype(np.float32)
    want = ort_run(m, {"x": x})["y"]
    for target in TARGETS:
        got = lc.compile(lc.load_onnx(m), target).run({"x": x})["y"]
        np.testing.assert_array_equal(got, want, err_msg=target)


def test_a_shape_used_as_data_or_in_symbolic_arithmetic_is_one_line():
    n = helper.make_node
    as_data = model([n("Shape", ["x"], ["s"]), n("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
                     n("Add", ["x", "f"], ["y"])], [("x", ["N", 2])], [("y", ["N", 2])])
    with pytest.raises(lc.UnsupportedOpError, match=r"a Cast of a shape to a non-integer"):
        lc.load_onnx(as_data)
    as_data = model([n("Shape", ["x"], ["s"]), n("Add", ["x", "s"], ["y"])],
                    [("x", ["N", 2], TensorProto.INT64)], [("y", ["N", 2], TensorProto.INT64)])
    with pytest.raises(lc.UnsupportedOpError, match=r"a shape with the symbolic dims") as e:
        lc.load_onnx(as_data)
    assert "\n" not in str(e.value)
    twice = shape_graph([n("Mul", ["n1", "two"], ["n2"]),
                         n("Concat", ["n2", "six"], ["target"], axis=0),
                         n("Reshape", ["x", "target"], ["y"])],
                        {"two": np.array([2], np.int64), "six": np.array([6], np.int64)})
    with pytest.raises(lc.UnsupportedOpError, match=r"Mul on the symbolic dim 'N'"):
        lc.load_onnx(twice)
