"""Split training graphs: a gradient graph and an update graph that, run in sequence, are the
fused training step, on every CPU target; the CLI's ``export-training --split``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TARGETS
from helpers import mlp, teacher_data

import lincompile as lc
from lincompile.cli import main
from lincompile.frontends.layout import start_state

OPTIMIZERS = {
    "sgd": lc.SGD(0.1),
    "sgd-momentum-wd": lc.SGD(0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lc.Adam(0.01),
    "adamw": lc.AdamW(0.01),
    "adagrad": lc.Adagrad(0.1, lr_decay=0.01, weight_decay=1e-3, initial_accumulator_value=0.1),
}
CPU_TARGETS = [t for t in TARGETS if t != "cuda"]
STEPS = 3


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def batches(loss: str):
    x, y = teacher_data(n=24, d_in=6, classes=3, seed=1)
    if loss == "mse":
        y = np.eye(3, dtype=np.float32)[y] * 2 - 0.5
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]


def run_fused(exe, graph, data, lr):
    state, outs = {k: np.asarray(v) for k, v in graph.initial_state.items()}, []
    for x, y in data:
        out = exe.run({"x": x, "target": y, "lr": np.float32(lr), **state})
        state = {k: out[f"{k}.next"] for k in state}
        outs.append(out)
    return outs


def run_split(grad_exe, update_exe, pair, data, lr):
    state = {k: np.asarray(v) for k, v in pair.update.initial_state.items()}
    params = [v.name for v in pair.grad.inputs[2:]]
    outs = []
    for x, y in data:
        g = grad_exe.run({"x": x, "target": y, **{p: state[p] for p in params}})
        u = update_exe.run({**state, **{f"{p}.grad": g[f"{p}.grad"] for p in params},
                            "lr": np.float32(lr)})
        state = {k: u[f"{k}.next"] for k in state}
        outs.append({**g, **u})
    return outs


def test_names_and_metadata():
    model = mlp((6, 5, 3))
    opt = lc.Adam(0.01)
    pair = lc.training_graph(model, optimizer=opt, split=True)
    assert isinstance(pair, lc.SplitTraining) and pair == (pair.grad, pair.update)
    alone = lc.training_graph(model, optimizer=None)
    assert [v.name for v in pair.grad.inputs] == [v.name for v in alone.inputs]
    assert [v.name for v in pair.grad.outputs] == [v.name for v in alone.outputs]
    ps = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    assert [v.name for v in pair.update.inputs] == [
        n for p in ps for n in (p, f"{p}.grad", f"{p}.m", f"{p}.v")] + ["step", "lr"]
    fused = lc.training_graph(model, optimizer=opt)
    assert [v.name for v in pair.update.outputs] == [v.name for v in fused.outputs[1:]]
    for g, part in ((pair.grad, "grad"), (pair.update, "update")):
        assert g.meta["lincompile.split"] == part
        assert g.meta["lincompile.role"] == "training"
        for k in ("lincompile.lr", "lincompile.optimizer", "lincompile.loss",
                  "lincompile.params"):
            assert g.meta[k] == fused.meta[k], k
    assert pair.grad.meta["lincompile.logits"] == fused.meta["lincompile.logits"]
    assert set(pair.grad.initial_state) == set(ps)
    assert set(pair.update.initial_state) == set(fused.initial_state)
    # the default return is unchanged: one graph
    assert isinstance(fused, lc.Graph)


def test_split_refuses_no_optimizer_and_emit_grads():
    with pytest.raises(lc.LincompileError, match="needs an optimizer"):
        lc.training_graph(mlp((6, 3)), optimizer=None, split=True)
    with pytest.raises(lc.LincompileError, match="emit_grads"):
        lc.training_graph(mlp((6, 3)), optimizer=lc.SGD(), split=True, emit_grads=True)


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_split_pair_equals_fused(target, opt):
    loss = "mse" if opt == "sgd-momentum-wd" else "cross-entropy"
    model, optimizer = mlp((6, 5, 3), seed=2), OPTIMIZERS[opt]
    fused = lc.training_graph(model, loss=loss, optimizer=optimizer)
    pair = lc.training_graph(model, loss=loss, optimizer=optimizer, split=True)
    data = batches(loss)
    want = run_fused(lc.compile(fused, target), fused, data, optimizer.lr)
    got = run_split(lc.compile(pair.grad, target), lc.compile(pair.update, target), pair, data,
                    optimizer.lr)
    for w, g in zip(want, got):
        for v in fused.outputs:
            assert rel(g[v.name], w[v.name]) <= 1e-6, (v.name, rel(g[v.name], w[v.name]))
    assert float(want[-1]["loss"]) < float(want[0]["loss"])   # it did train


def test_split_files_load_back(tmp_path):
    model, opt = mlp((6, 5, 3), seed=3), OPTIMIZERS["sgd-momentum-wd"]
    pair = lc.training_graph(model, optimizer=opt, split=True)
    loaded = []
    for g, part in ((pair.grad, "grad"), (pair.update, "update")):
        lc.save_onnx(g, tmp_path / f"t.{part}.onnx")
        back = lc.load_onnx(tmp_path / f"t.{part}.onnx")
        assert back.meta["lincompile.split"] == part
        assert [v.name for v in back.inputs] == [v.name for v in g.inputs]
        assert [v.name for v in back.outputs] == [v.name for v in g.outputs]
        loaded.append(back)
    back = lc.SplitTraining(*loaded)
    back.update.initial_state = pair.update.initial_state
    data = batches("cross-entropy")
    want = run_split(lc.compile(pair.grad, "reference"), lc.compile(pair.update, "reference"),
                     pair, data, opt.lr)
    got = run_split(lc.compile(back.grad, "onnx"), lc.compile(back.update, "onnx"), back, data,
                    opt.lr)
    for w, g in zip(want, got):
        for k in w:
            assert rel(g[k], w[k]) <= 1e-5, k


def test_cli_export_training_split(tmp_path, capsys):
    model = mlp((6, 5, 3), seed=4)
    lc.save_onnx(model, tmp_path / "m.onnx")
    out = tmp_path / "m_train.onnx"
    assert main(["export-training", str(tmp_path / "m.onnx"), "-o", str(out), "--split",
                 "--loss", "mse", "--optimizer", "adam", "--lr", "0.01"]) == 0
    text = capsys.readouterr().out
    grad, update = tmp_path / "m_train.grad.onnx", tmp_path / "m_train.update.onnx"
    assert grad.is_file() and update.is_file() and not out.exists()
    assert str(grad) in text and str(update) in text
    state = dict(np.load(tmp_path / "m_train.state.npz"))
    pair = lc.SplitTraining(lc.load_onnx(grad), lc.load_onnx(update))
    assert json.loads(pair.update.meta["lincompile.optimizer"])["type"] == "adam"
    expect = start_state(lc.training_graph(model, loss="mse", optimizer=lc.Adam(0.01)))
    assert sorted(state) == sorted(expect)
    for k in state:
        np.testing.assert_array_equal(state[k], expect[k])
    # the files make a complete step from the state file
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    t = np.zeros((5, 3), np.float32)
    g = lc.compile(pair.grad, "onnx").run(
        {"x": x, "target": t, **{v.name: state[v.name] for v in pair.grad.inputs[2:]}})
    u = lc.compile(pair.update, "onnx").run(
        {**state, **{k: v for k, v in g.items() if k.endswith(".grad")}})
    assert int(u["step.next"]) == 1
    assert main(["export-training", str(tmp_path / "m.onnx"), "-o", str(out), "--split",
                 "--loss", "mse", "--optimizer", "none"]) == 2
    assert "--split" in capsys.readouterr().err
