"""BatchNormalization (torch.nn.BatchNorm1d over features) in its inference form: the running
statistics stay fixed and scale/bias train — torch's BatchNorm in ``eval()`` mode, as when
fine-tuning with frozen statistics — against torch itself."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import TARGETS
from helpers import assert_trains_like_torch, export_torch
from onnx import helper, numpy_helper
from onnx_models import model, ort_run

import lincompile as lc
from lincompile.cli import main

RNG = np.random.default_rng(4)


def torch_bn(torch):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn, self.fc2 = (torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5),
                                           torch.nn.Linear(5, 2))

        def forward(self, x):
            return self.fc2(torch.relu(self.bn(self.fc1(x))))

    torch.manual_seed(2)
    m = Net()
    with torch.no_grad():
        for _ in range(5):   # running statistics away from 0 and 1
            m(torch.randn(16, 6) * 3 + 1)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


def test_torchscript_batchnorm_trains_like_torch_in_eval_mode(tmp_path):
    torch = pytest.importorskip("torch", reason="the model and the oracle")
    m = torch_bn(torch)
    g = lc.load_onnx(export_torch(m, torch.rand(4, 6), tmp_path / "bn.onnx", "torchscript"))
    assert {"bn.weight", "bn.bias"} <= {k for k, p in g.params.items() if p.trainable}
    batches = [(RNG.standard_normal((n, 6)).astype(np.float32),
                RNG.standard_normal((n, 2)).astype(np.float32)) for n in (5, 3, 4)]
    assert_trains_like_torch(m, g, batches, TARGETS)


def test_trained_file_keeps_the_running_statistics_and_runs_in_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch", reason="the model")
    path = export_torch(torch_bn(torch), torch.rand(4, 6), tmp_path / "bn.onnx", "torchscript")
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((40, 6)).astype(np.float32),
             y=RNG.standard_normal((40, 2)).astype(np.float32))
    out = tmp_path / "trained.onnx"
    assert main(["train", str(path), "--data", str(tmp_path / "d.npz"), "-o", str(out),
                 "--loss", "mse", "--optimizer", "sgd", "--lr", "0.05", "--epochs", "2"]) == 0
    before, after = ({t.name: numpy_helper.to_array(t) for t in onnx.load(p).graph.initializer}
                     for p in (path, out))
    stats = [k for k in before if "running" in k]
    assert stats and all(np.array_equal(before[k], after[k]) for k in stats)
    assert not np.array_equal(before["bn.weight"], after["bn.weight"])
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    got = lc.compile(lc.load_onnx(out), "reference").run({"x": x})
    want = ort_run(onnx.load(out), {"x": x})
    np.testing.assert_allclose(next(iter(got.values())), next(iter(want.values())),
                               rtol=1e-5, atol=1e-6)


def _bn(shape, **attrs):
    c = shape[1]
    n = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], **attrs)
    ones = np.ones(c, np.float32)
    return model([n], [("x", shape)], [("y", shape)],
                 {"s": ones, "b": ones * 0, "m": ones * 0, "v": ones})


@pytest.mark.parametrize("shape, attrs, words", [
    (["N", 4], {"training_mode": 1}, "only the inference form"),
    (["N", 4, 3], {}, r"only \[N, C\] inputs"),
])
def test_other_forms_are_one_line_errors(shape, attrs, words):
    with pytest.raises(lc.UnsupportedOpError, match=words) as e:
        lc.load_onnx(_bn(shape, **attrs))
    assert "\n" not in str(e.value)
