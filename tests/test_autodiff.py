"""The chain rule: Linear's rule against its element-form sums, accumulation, pruning."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mlp

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable


def test_linear_rule_equals_element_form_sums(rng):
    """DESIGN §1: dInput[i,j] = Σ_q W[q,j]·dOut[i,q]; dW[i,j] = Σ_p dOut[p,i]·In[p,j];
    dBias[j] = Σ_p dOut[p,j], evaluated with explicit loops over the table's indices."""
    N, C_in, C_out = 4, 5, 3
    g = lc.Graph("lin")
    x, w, b = g.input("x", ["N", C_in]), g.input("w", [C_out, C_in]), g.input("b", [C_out])
    dout = g.input("dout", ["N", C_out])
    g.output(g.reduce_sum(g.mul(g.apply("linear", [x, w, b]), dout)), name="f")
    gg = lc.grad(g, of="f", wrt=["x", "w", "b"])
    f = {k: rng.standard_normal(s) for k, s in
         {"x": (N, C_in), "w": (C_out, C_in), "b": (C_out,), "dout": (N, C_out)}.items()}
    got = ReferenceExecutable(gg, "float64").run(f)

    d_in, d_w, d_b = np.zeros((N, C_in)), np.zeros((C_out, C_in)), np.zeros(C_out)
    for i in range(N):
        for j in range(C_in):
            d_in[i, j] = sum(f["w"][q, j] * f["dout"][i, q] for q in range(C_out))
    for i in range(C_out):
        for j in range(C_in):
            d_w[i, j] = sum(f["dout"][p, i] * f["x"][p, j] for p in range(N))
    for j in range(C_out):
        d_b[j] = sum(f["dout"][p, j] for p in range(N))
    np.testing.assert_allclose(got["x.grad"], d_in, rtol=1e-12)
    np.testing.assert_allclose(got["w.grad"], d_w, rtol=1e-12)
    np.testing.assert_allclose(got["b.grad"], d_b, rtol=1e-12)


def test_linear_rule_is_the_three_products():
    g = lc.Graph("lin")
    g.output(g.mse(g.linear(g.input("x", ["N", 5]), 3, name="fc"), g.input("t", ["N", 3])),
             name="loss")
    gg = lc.grad(g, of="loss", wrt=["x", "fc.weight", "fc.bias"])
    by_out = {n.outputs[0].name: n for n in gg.nodes}
    dx, dw, db = by_out["x.grad"], by_out["fc.weight.grad"], by_out["fc.bias.grad"]
    assert (dx.op, [v.name for v in dx.inputs], dx.attrs["trans_a"]) == \
        ("matmul", ["fc.grad", "fc.weight"], False)                       # dOut · W
    assert (dw.op, [v.name for v in dw.inputs], dw.attrs["trans_a"]) == \
        ("matmul", ["fc.grad", "x"], True)                                # dOutᵀ · Input
    assert (db.op, db.attrs["axes"]) == ("reduce_sum", [0])              # Σ_n dOut


def test_accumulates_gradient_of_a_value_with_two_consumers(rng):
    g = lc.Graph("fan")
    x = g.input("x", ["N", 3])
    h = g.tanh(x)
    g.output(g.reduce_sum(g.add(g.mul(h, h), g.sigmoid(h))), name="f")
    gg = lc.grad(g, of="f", wrt=["x"])
    adds = [n for n in gg.nodes if n.op == "add" and n.outputs[0].name == "tanh.grad"]
    assert len(adds) == 1  # the two paths through h are summed into tanh.grad
    xv = rng.standard_normal((4, 3))
    got = ReferenceExecutable(gg, "float64").run({"x": xv})["x.grad"]
    t = np.tanh(xv)
    s = 1 / (1 + np.exp(-t))
    np.testing.assert_allclose(got, (2 * t + s * (1 - s)) * (1 - t * t), rtol=1e-12)


def test_no_input_gradient_unless_asked():
    g = mlp((6, 5, 3))
    g.output(g.mse(g.outputs.pop(), g.input("t", ["N", 3])), name="loss")
    gg = lc.grad(g, of="loss")
    names = {v.name for n in gg.nodes for v in n.outputs}
    assert "x.grad" not in names
    # the first layer's dInput (dOut·W with W = fc1.weight) is never built
    assert not any(n.op == "matmul" and n.inputs[1].name == "fc1.weight" for n in gg.nodes)
    asked = lc.grad(g, of="loss", wrt=["x"])
    assert [v.name for v in asked.outputs] == ["loss", "x.grad"]
    assert any(n.op == "matmul" and n.inputs[1].name == "fc1.weight" for n in asked.nodes)


def test_frozen_parameters_get_no_gradient():
    t = lc.training_graph(mlp((6, 5, 3)), loss="cross-entropy", optimizer=lc.SGD(0.1),
                          frozen=["fc1.weight", "fc1.bias"])
    produced = {v.name for n in t.nodes for v in n.outputs}
    assert not {"fc1.weight.grad", "fc1.bias.grad", "fc1.weight.next"} & produced
    assert "fc1.weight" in t.params and not t.params["fc1.weight"].trainable
    # nothing below the trainable layer is differentiated: not even fc2's dInput = dOut·W2
    assert not any(n.op == "matmul" and not n.attrs["trans_a"] for n in t.nodes)
    assert {"fc2.weight.next", "fc2.bias.next"} <= {v.name for v in t.outputs}


def test_gradient_of_unused_parameter_is_zero():
    g = lc.Graph("m")
    x = g.input("x", ["N", 2])
    g.linear(x, 2, name="unused")
    g.output(g.reduce_sum(g.relu(x)), name="f")
    out = ReferenceExecutable(lc.grad(g, of="f"), "float64").run({"x": np.ones((3, 2))})
    assert np.array_equal(out["unused.weight.grad"], np.zeros((2, 2)))


def test_missing_rule_is_a_loud_error_listing_rules():
    g = lc.Graph("m")
    x = g.input("x", ["N", 2])
    y = g.relu(x)
    g.output(g.reduce_sum(g.apply("relu_grad", [y, y])), name="f")
    with pytest.raises(lc.GradientError, match="'relu_grad' has no gradient rule.*linear"):
        lc.grad(g, of="f", wrt=["x"])


def test_gradient_of_non_scalar_is_refused():
    g = lc.Graph("m")
    g.output(g.relu(g.input("x", ["N", 2])))
    with pytest.raises(lc.GradientError, match="scalar"):
        lc.grad(g, of="relu", wrt=["x"])
