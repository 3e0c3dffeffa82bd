"""Division (``div``, ONNX ``Div``): the scaling and standardizing that real models do in
their first layer — ``x / 255``, ``(x − mean) / std`` — and a quotient of activations, on
every target, against torch (gradients against central differences are in test_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TARGETS

import lincompile as lc
from lincompile.frontends.layout import start_state


def quotient_graph() -> lc.Graph:
    g = lc.Graph("q", seed=0)
    a, b = g.input("a", ["N", 5]), g.input("b", ["N", 5])
    g.output(g.div(a, b), name="y")
    return g


@pytest.mark.parametrize("target", TARGETS)
def test_division_by_zero_and_infinities_like_torch(target):
    torch = pytest.importorskip("torch", reason="the oracle for IEEE division")
    inf, nan = np.inf, np.nan
    a = np.array([[1, -1, 0, inf, nan], [inf, -inf, 2, 0, -0.0]], np.float32)
    b = np.array([[0, 0, 0, inf, 1], [2, 0, -inf, -0.0, -0.0]], np.float32)
    want = (torch.from_numpy(a) / torch.from_numpy(b)).numpy()
    got = lc.compile(quotient_graph(), target).run({"a": a, "b": b})["y"]
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def torch_models(torch):
    class Scaled(torch.nn.Module):   # pixels in 0..255, standardized, then an MLP
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.rand(6) * 100)
            self.register_buffer("std", torch.rand(6) * 50 + 10)
            self.fc1, self.fc2 = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

        def forward(self, x):
            x = (x / 255.0 * 255.0 - self.mean) / self.std
            h = torch.tanh(self.fc1(x))
            return self.fc2(h / (h * h + 1.0))   # a quotient of activations too

    torch.manual_seed(0)
    return Scaled().eval()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_export_imports_and_trains_like_torch(exporter, tmp_path):
    torch = pytest.importorskip("torch", reason="the model and the oracle")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    m = torch_models(torch)
    path = tmp_path / "scaled.onnx"
    kw = ({"dynamic_shapes": {"x": {0: torch.export.Dim("N")}}} if exporter == "dynamo" else
          {"dynamic_axes": {"x": {0: "N"}}})
    torch.onnx.export(m, (torch.rand(4, 6) * 255,), str(path), input_names=["x"],
                      opset_version=18, dynamo=exporter == "dynamo", **kw)
    g = lc.load_onnx(path)
    assert "div" in {n.op for n in g.nodes}
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(0, 255, (n, 6)).astype(np.float32),
                rng.standard_normal((n, 3)).astype(np.float32)) for n in (5, 3, 4)]
    x0 = batches[0][0]
    want = m(torch.from_numpy(x0)).detach().numpy()
    train = lc.training_graph(g, "mse", lc.SGD(0.05, momentum=0.9))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for target in TARGETS:
        exe = lc.compile(g, target)
        got = exe.run({"x": x0})[g.outputs[0].name]
        assert np.abs(got - want).max() <= 1e-5 * max(1, np.abs(want).max()), target
        step, state = lc.compile(train, target), start_state(train)
        for (x, y), lv in zip(batches, losses):
            out = step.run({"x": x, "target": y, **state})
            assert abs(float(out["loss"]) - lv) <= 1e-4 * max(1, abs(lv)), (target, lv)
            state = {k: out.get(f"{k}.next", v) for k, v in state.items()}
