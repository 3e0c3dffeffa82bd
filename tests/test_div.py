"""Division (``div``, ONNX ``Div``): the scaling and standardizing that real models do in
their first layer — ``x / 255``, ``(x − mean) / std`` — and a quotient of activations, on
every target, against torch (gradients against central differences are in test_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TARGETS
from helpers import assert_trains_like_torch, export_torch

import lincompile as lc


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
    m = torch_models(torch)
    g = lc.load_onnx(export_torch(m, torch.rand(4, 6) * 255, tmp_path / "scaled.onnx",
                                  exporter))
    assert "div" in {n.op for n in g.nodes}
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(0, 255, (n, 6)).astype(np.float32),
                rng.standard_normal((n, 3)).astype(np.float32)) for n in (5, 3, 4)]
    assert_trains_like_torch(m, g, batches, TARGETS)
