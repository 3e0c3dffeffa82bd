"""Training graphs: the DESIGN §4 contract, and 100-step runs on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import COMPILED
from helpers import mlp, teacher_data, train

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable

OPTIMIZERS = {
    "sgd": lc.SGD(0.1),
    "sgd-wd": lc.SGD(0.1, weight_decay=1e-2),   # no momentum: C and CUDA may fuse dW in
    "sgd-momentum-wd": lc.SGD(0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lc.Adam(0.01),
    "adam-l2": lc.Adam(0.01, weight_decay=1e-2),
    "adamw": lc.AdamW(0.01),
}


def test_contract_names_sgd_momentum():
    t = lc.training_graph(mlp((6, 5, 3)), optimizer=lc.SGD(0.1, momentum=0.9))
    assert [v.name for v in t.inputs] == [
        "x", "target",
        "fc1.weight", "fc1.weight.velocity", "fc1.bias", "fc1.bias.velocity",
        "fc2.weight", "fc2.weight.velocity", "fc2.bias", "fc2.bias.velocity", "lr"]
    assert [v.name for v in t.outputs] == ["loss"] + [
        f"{p}{s}.next" for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        for s in ("", ".velocity")]
    types = {v.name: (v.dtype, v.shape) for v in t.inputs + t.outputs}
    assert types["target"] == ("int64", ("N",)) and types["lr"] == ("float32", ())
    assert types["loss"] == ("float32", ())
    assert t.meta["lincompile.lr"] == "0.1"


def test_contract_names_adam_mse_emit_grads():
    t = lc.training_graph(mlp((6, 3)), loss="mse", optimizer=lc.Adam(), emit_grads=True)
    assert [v.name for v in t.inputs] == ["x", "target", "fc1.weight", "fc1.weight.m",
                                          "fc1.weight.v", "fc1.bias", "fc1.bias.m",
                                          "fc1.bias.v", "step", "lr"]
    assert [v.name for v in t.outputs] == [
        "loss", "fc1.weight.next", "fc1.weight.m.next", "fc1.weight.v.next", "fc1.bias.next",
        "fc1.bias.m.next", "fc1.bias.v.next", "step.next", "fc1.weight.grad", "fc1.bias.grad"]
    types = {v.name: (v.dtype, v.shape) for v in t.inputs}
    assert types["target"] == ("float32", ("N", 3)) and types["step"] == ("int64", ())
    assert t.meta["lincompile.lr"] == "0.001"


def test_no_optimizer_outputs_loss_and_grads():
    t = lc.training_graph(mlp((6, 3)), loss="cross-entropy", optimizer=None)
    assert [v.name for v in t.outputs] == ["loss", "fc1.weight.grad", "fc1.bias.grad"]
    assert "lr" not in {v.name for v in t.inputs}


def test_initial_state_is_the_model_and_zeros():
    m = mlp((6, 3))
    t = lc.training_graph(m, optimizer=lc.Adam())
    assert np.array_equal(t.initial_state["fc1.weight"], m.params["fc1.weight"].data)
    assert not t.initial_state["fc1.weight.m"].any() and t.initial_state["step"] == 0


@pytest.mark.parametrize("optimizer", [lc.SGD(0.1), lc.SGD(0.1, momentum=0.9), lc.Adam()])
def test_initial_state_is_a_copy_on_cache_lines(optimizer):
    """The state arrays start on 64-byte lines (the C kernels' vector loads of a weight
    then never span two lines) and share no memory with the model."""
    m = mlp((6, 300, 3))
    t = lc.training_graph(m, optimizer=optimizer)
    for k, v in t.initial_state.items():
        if v.ndim:
            assert v.ctypes.data % 64 == 0 and v.flags.c_contiguous, k
        if k in m.params:
            assert np.array_equal(v, m.params[k].data) and v.dtype == m.params[k].data.dtype
            assert not np.shares_memory(v, m.params[k].data), k


def test_bad_arguments_are_clear():
    with pytest.raises(lc.LincompileError, match="unknown loss 'hinge'"):
        lc.training_graph(mlp(), loss="hinge")
    with pytest.raises(lc.LincompileError, match="cannot freeze \\['fc9.weight'\\]"):
        lc.training_graph(mlp(), frozen=["fc9.weight"])
    two = mlp()
    two.output(two.values["x"])
    with pytest.raises(lc.LincompileError, match="2 outputs"):
        lc.training_graph(two)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_one_step_on_every_backend(name, loss, target):
    t = lc.training_graph(mlp((7, 6, 3)), loss=loss, optimizer=OPTIMIZERS[name])
    report = lc.validate(t, [target], batch=5)
    assert report.ok, str(report)


@pytest.mark.parametrize("target", COMPILED)
@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adam"])
def test_hundred_steps_match_the_float64_reference(name, target):
    """A 2-layer MLP trained 100 steps: the loss falls, and the backend's curve equals the
    float64 reference's."""
    t = lc.training_graph(mlp((20, 16, 4), seed=1), optimizer=OPTIMIZERS[name])
    x, y = teacher_data(128)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    lr = OPTIMIZERS[name].lr
    ref, _ = train(ReferenceExecutable(t, "float64"), t, batches, lr, 100)
    got, state = train(lc.compile(t, target), t, batches, lr, 100)
    assert got[-4:].mean() < 0.5 * got[:4].mean(), got
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6)
    assert all(np.isfinite(v).all() for v in state.values())
