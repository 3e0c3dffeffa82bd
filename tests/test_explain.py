"""``lincompile explain``: DESIGN §1's table with each Linear's real names and shapes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lincompile as lc
from lincompile.explain import explain, linears


def mlp(sizes=(20, 16, 4), bias=True) -> lc.Graph:
    g = lc.Graph("mlp", seed=0)
    h = g.input("x", ["N", sizes[0]])
    for i, n in enumerate(sizes[1:], 1):
        h = g.linear(h, n, bias=bias, name=f"fc{i}")
        if i < len(sizes) - 1:
            h = g.relu(h)
    g.output(h)
    return g


def dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


@pytest.mark.parametrize("sizes", [(20, 16, 4), (7, 3), (5, 9, 2, 6)])
def test_shapes_come_from_the_model(sizes):
    g = mlp(sizes)
    text = explain(g)
    assert len(linears(g)) == len(sizes) - 1
    for i in range(1, len(sizes)):
        w = g.params[f"fc{i}.weight"].data  # the independent source of the shapes
        c_out, c_in = w.shape
        x = next(n for n in g.nodes if n.name == f"fc{i}").inputs[0].name
        y = f"fc{i}"
        assert f"weight fc{i}.weight {dims(w.shape)} = [C_out, C_in]" in text
        assert f"bias fc{i}.bias {dims(g.params[f'fc{i}.bias'].data.shape)}" in text
        assert (f"{y}[n, o] = fc{i}.bias[o] + Σ_k fc{i}.weight[o, k] · {x}[n, k]") in text
        # DESIGN §1: dInput = dOut·W, dW = dOutᵀ·Input, dBias = 1ᵀ·dOut
        assert (f"{x}.grad = {y}.grad · fc{i}.weight   {dims(['N', c_out])}·{dims(w.shape)} → "
                f"{dims(['N', c_in])}") in text
        assert (f"fc{i}.weight.grad = {y}.gradᵀ · {x}   {dims([c_out, 'N'])}·"
                f"{dims(['N', c_in])} → {dims(w.shape)}") in text
        assert f"fc{i}.bias.grad = 1ᵀ · {y}.grad   [1, N]·{dims(['N', c_out])} → [{c_out}]" \
            in text
        assert f"fc{i}.weight.grad[i, j] = Σ_p {y}.grad[p, i] · {x}[p, j]" in text
        assert f"{x}.grad[i, j] = Σ_q fc{i}.weight[q, j] · {y}.grad[i, q]" in text
        assert f"∂{y}[p, q] / ∂fc{i}.weight[i, j] = {x}[p, j]   when q = i" in text


def test_matrix_forms_compute_the_gradients():
    """The printed matrix forms, evaluated in numpy, equal lincompile's own gradients."""
    m = lc.Graph("m", seed=1)
    xi = m.input("x", ["N", 6])
    ti = m.input("t", ["N", 3])
    m.output(m.mse(m.linear(xi, 3, name="fc1"), ti), name="loss")
    grads = lc.compile(lc.grad(m, of="loss", wrt=["fc1.weight", "fc1.bias", "x"]),
                       "reference")
    rng = np.random.default_rng(0)
    xv, tv = rng.standard_normal((5, 6)), rng.standard_normal((5, 3))
    out = grads.run({"x": xv.astype(np.float32), "t": tv.astype(np.float32)})
    w, b = m.params["fc1.weight"].data, m.params["fc1.bias"].data
    dy = 2 * (xv @ w.T + b - tv) / tv.size  # ∂mse/∂out
    text = explain(m)
    assert "x.grad = fc1.grad · fc1.weight" in text
    np.testing.assert_allclose(out["x.grad"], dy @ w, rtol=1e-5, atol=1e-6)
    assert "fc1.weight.grad = fc1.gradᵀ · x" in text
    np.testing.assert_allclose(out["fc1.weight.grad"], dy.T @ xv, rtol=1e-5, atol=1e-6)
    assert "fc1.bias.grad = 1ᵀ · fc1.grad" in text
    np.testing.assert_allclose(out["fc1.bias.grad"], np.ones(5) @ dy, rtol=1e-5, atol=1e-6)


def test_bias_free_linear_has_no_bias_gradient():
    text = explain(mlp((5, 4), bias=False))
    assert "no bias" in text and "bias.grad" not in text
    assert "fc1[n, o] = Σ_k fc1.weight[o, k] · x[n, k]" in text


def test_training_graph_names_the_nodes_that_compute_each_gradient():
    train = lc.training_graph(mlp(), "cross-entropy", lc.SGD(0.1))
    text = explain(train)
    assert text.startswith("graph 'mlp_train' (training): 2 Linear layer(s)")
    nodes = {n.name: n.op for n in train.nodes}
    for name, op in re.findall(r"computed by node '([^']+)' \((\w+)\)", text):
        assert nodes[name] == op
    assert "in this graph: computed by node 'fc1.weight.grad' (matmul)" in text
    assert "in this graph: computed by node 'fc1.bias.grad' (reduce_sum)" in text
    assert "in this graph: not computed" in text  # x.grad: nothing needs it
    assert len(linears(train)) == 2  # gradient matmuls are not Linear layers
    frozen = explain(lc.training_graph(mlp(), "mse", lc.SGD(), frozen=["fc1.weight"]))
    assert frozen.count("not computed (a frozen parameter)") == 1


def test_markdown_and_latex():
    g = mlp()
    md = explain(g, "markdown")
    assert md.count("| gradient | element form | matrix form | shapes |") == 2
    assert len(re.findall(r"^\| `fc\d\.(weight|bias)\.grad` \|", md, re.M)) == 4
    tex = explain(g, "latex")
    assert tex.count(r"\begin{align*}") == tex.count(r"\end{align*}") == 2
    body = re.sub(r"\\[{}]", "", tex)
    assert body.count("{") == body.count("}")
    assert r"\mathtt{fc1.weight.grad} &= \mathtt{fc1.grad}^\top" in tex
    odd = lc.Graph("odd")
    odd.output(odd.linear(odd.input("a_b", ["N", 2]), 2, name="l#1"))
    tex = explain(odd, "latex")
    assert r"\mathtt{a\_b}" in tex and r"\mathtt{l\#1.weight}" in tex


def test_graph_without_linear_and_unknown_format():
    g = lc.Graph("act")
    g.output(g.relu(g.input("x", ["N", 3])))
    assert "has no Linear layer" in explain(g)
    with pytest.raises(lc.LincompileError, match="unknown format 'html'"):
        explain(mlp(), "html")
