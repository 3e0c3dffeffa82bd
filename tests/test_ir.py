"""The IR: builder, shape/dtype inference, symbolic batch, verify(), str(), clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import lincompile as lc
from lincompile.ir import Node


def test_builder_infers_shapes_with_symbolic_batch():
    g = lc.Graph("mlp")
    x = g.input("x", ["N", 784])
    h = g.relu(g.linear(x, 128, name="fc1"))
    y = g.output(g.linear(h, 10, name="fc2", bias=False))
    assert h.shape == ("N", 128) and y.shape == ("N", 10) and y.dtype == "float32"
    assert list(g.params) == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert g.params["fc1.weight"].data.shape == (128, 784)
    g.verify()


def test_linear_init_follows_torch_default_and_seed():
    w = lc.Graph(seed=3)
    w.linear(w.input("x", ["N", 100]), 50, name="fc")
    data = w.params["fc.weight"].data
    assert data.dtype == np.float32 and np.abs(data).max() <= 1 / np.sqrt(100)
    assert np.abs(data).max() > 0.09  # U(-0.1, 0.1), not a narrower init
    again = lc.Graph(seed=3)
    again.linear(again.input("x", ["N", 100]), 50, name="fc")
    assert np.array_equal(again.params["fc.weight"].data, data)


def test_str_is_readable():
    g = lc.Graph("m")
    g.output(g.relu(g.linear(g.input("x", ["N", 3]), 2, name="fc")))
    text = str(g)
    assert "graph m(x: float32[N, 3])" in text
    assert "fc: float32[N, 2] = linear(x, fc.weight, fc.bias)" in text
    assert "param fc.weight: float32[2, 3]  (trainable)" in text


def test_feature_mismatch_names_node_and_tensors():
    g = lc.Graph("m")
    x = g.input("x", ["N", 3])
    w = g.param("w", np.zeros((2, 4), np.float32))
    with pytest.raises(lc.ShapeError, match=r"node 'bad' \(linear\).*'x'.*3 features.*'w'"):
        g.apply("linear", [x, w], name="bad")


def test_dtype_mismatch_is_an_error():
    g = lc.Graph("m")
    a, b = g.input("a", ["N", 3]), g.input("b", ["N", 3], "float64")
    with pytest.raises(lc.ShapeError, match="node 'add' \\(add\\).*float64.*float32"):
        g.add(a, b)


def test_broadcast_rules():
    g = lc.Graph("m")
    a = g.input("a", ["N", 3])
    assert g.add(a, g.input("b", [3])).shape == ("N", 3)
    assert g.mul(a, g.input("c", [1, 3])).shape == ("N", 3)
    assert g.add(a, g.input("s", [])).shape == ("N", 3)
    with pytest.raises(lc.ShapeError, match="do not broadcast"):
        g.add(a, g.input("d", [4]))


def test_unknown_op_and_attr():
    g = lc.Graph("m")
    x = g.input("x", ["N", 3])
    with pytest.raises(lc.UnsupportedOpError, match="unknown op 'conv'.*linear"):
        g.apply("conv", [x])
    with pytest.raises(lc.ShapeError, match="unknown attribute.*'alpha'"):
        g.apply("relu", [x], alpha=1.0)


def test_duplicate_names_rejected():
    g = lc.Graph("m")
    g.input("x", ["N", 3])
    with pytest.raises(lc.ShapeError, match="'x' is already defined"):
        g.input("x", ["N", 3])


def test_verify_reports_use_before_definition():
    g = lc.Graph("m")
    x = g.input("x", ["N", 3])
    y = g.relu(x)
    z = g.tanh(y)
    g.nodes.reverse()  # tanh now comes before relu
    with pytest.raises(lc.LincompileError, match="node 'tanh' \\(tanh\\): input 'relu' is used "
                                                 "before"):
        g.verify()
    assert z.shape == ("N", 3)


def test_verify_reports_inconsistent_types():
    g = lc.Graph("m")
    x = g.input("x", ["N", 3])
    bogus = lc.Value("y", "float32", ("N", 3, 1))
    g.values["y"] = bogus
    g.nodes.append(Node("relu", "r", [x], [bogus]))
    with pytest.raises(lc.ShapeError, match="node 'r' \\(relu\\)"):
        g.verify()


def test_clone_is_independent():
    g = lc.Graph("m")
    g.output(g.linear(g.input("x", ["N", 3]), 2, name="fc"))
    c = g.clone()
    c.params["fc.weight"].data[:] = 0
    c.relu(c.outputs[0])
    assert np.any(g.params["fc.weight"].data != 0) and len(g.nodes) == 1


def test_reshape_and_flatten_shapes():
    g = lc.Graph("m")
    x = g.input("x", ["N", 1, 8, 8])
    assert g.flatten(x).shape == ("N", 64)
    assert g.reshape(x, [-1, 64]).shape == ("N", 64)
    assert g.reshape(x, [0, 8, 8]).shape == ("N", 8, 8)
    with pytest.raises(lc.ShapeError, match="cannot reshape"):
        g.reshape(g.input("y", [4, 6]), [5, 5])
