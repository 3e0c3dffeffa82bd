"""Data-parallel ``lc.train(..., workers=2)`` / ``lincompile train --workers 2`` on
torch.distributed (gloo): the same parameters as one process on the full minibatches, with
uneven shards and a worker left without rows; under torchrun too. Oracle: the one-process
loop (itself checked against torch in test_train.py)."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import mlp, teacher_data
from onnx import numpy_helper

import lincompile as lc
from lincompile.cli import main

BATCH, BOUND = 8, 1e-5
#: 37 rows: the fifth batch has 5 rows (2 + 3 per worker); 33 rows: the fifth has 1 row, so
#: one worker has none. One epoch of batch 8 is 5 steps.
CASES = {
    "ce-momentum-37": ("cross-entropy", lc.SGD(0.1, momentum=0.9), 37),
    "mse-momentum-wd-33": ("mse", lc.SGD(0.05, momentum=0.9, weight_decay=1e-3), 33),
    "ce-adam-33": ("cross-entropy", lc.Adam(0.01), 33),
    "mse-adam-37": ("mse", lc.Adam(0.01), 37),
}


def data(loss: str, n: int):
    x, y = teacher_data(n=n, d_in=6, classes=3, seed=1)
    if loss == "mse":
        return x, (np.eye(3, dtype=np.float32)[y] * 2 - 0.5)
    return x, y


def max_rel(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.linalg.norm(a[k].astype(np.float64) - b[k])
                     / np.linalg.norm(b[k].astype(np.float64))) for k in b)


def params(g: lc.Graph) -> dict[str, np.ndarray]:
    return {k: p.data for k, p in g.params.items() if p.trainable and not p.const}


def no_children_left() -> None:
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("case", list(CASES))
def test_two_workers_equal_one_process(case):
    pytest.importorskip("torch.distributed")
    loss, opt, n = CASES[case]
    kw = dict(loss=loss, optimizer=opt, epochs=1, batch_size=BATCH, val_split=0, seed=3,
              target="onnx")
    one, h1 = lc.train(mlp((6, 5, 3), seed=2), data(loss, n), **kw)
    two, h2 = lc.train(mlp((6, 5, 3), seed=2), data(loss, n), workers=2, **kw)
    no_children_left()
    start = params(mlp((6, 5, 3), seed=2))
    assert max_rel(params(one), start) > 1e-3   # five steps moved the parameters
    assert max_rel(params(two), params(one)) <= BOUND
    assert h2.loss[0] == pytest.approx(h1.loss[0], rel=BOUND)
    assert h2.metric[0] == pytest.approx(h1.metric[0], rel=BOUND)


def model_and_data(tmp_path):
    lc.save_onnx(mlp((6, 5, 3), seed=2), tmp_path / "m.onnx")
    x, y = data("cross-entropy", 37)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path / "m.onnx", tmp_path / "d.npz"


def file_params(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


TRAIN_ARGS = ["--loss", "cross-entropy", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1",
              "--batch-size", str(BATCH), "--val-split", "0.25", "--target", "onnx"]


def one_process(model, data_file):
    trained, _ = lc.train(model, data_file, loss="cross-entropy", optimizer=lc.Adam(0.01),
                          epochs=1, batch_size=BATCH, val_split=0.25, target="onnx")
    return params(trained)


def test_cli_workers(tmp_path):
    pytest.importorskip("torch.distributed")
    model, data_file = model_and_data(tmp_path)
    out = tmp_path / "trained.onnx"
    res = subprocess.run([sys.executable, "-m", "lincompile", "train", model, "--data",
                          data_file, "-o", out, "--workers", "2", *TRAIN_ARGS],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 workers (gloo)" in res.stdout and res.stdout.count("final val accuracy") == 1
    assert max_rel(file_params(out), one_process(model, data_file)) <= BOUND


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_single_node(tmp_path):
    pytest.importorskip("torch.distributed.run")
    model, data_file = model_and_data(tmp_path)
    out = tmp_path / "trained.onnx"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                          "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                          "--master-port", str(free_port()), "-m", "lincompile", "train",
                          model, "--data", data_file, "-o", out, *TRAIN_ARGS],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("2 workers (gloo)") == 1   # rank 0 alone prints
    assert max_rel(file_params(out), one_process(model, data_file)) <= BOUND


def test_without_torch_one_line(tmp_path, monkeypatch, capsys):
    model, data_file = model_and_data(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    assert main(["train", str(model), "--data", str(data_file), "-o", str(tmp_path / "t.onnx"),
                 "--workers", "2", *TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install torch" in err
    assert not (tmp_path / "t.onnx").exists()
    with pytest.raises(lc.LincompileError, match="pip install torch"):
        lc.train(mlp((6, 3)), data("cross-entropy", 8), workers=2)
    # one worker is the ordinary path: no torch needed
    lc.train(mlp((6, 3)), data("cross-entropy", 8), workers=1, epochs=1)


def test_workers_checked(monkeypatch):
    with pytest.raises(lc.LincompileError, match="workers must be an integer"):
        lc.train(mlp((6, 3)), data("cross-entropy", 8), workers=0)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(lc.LincompileError, match="torchrun started 4"):
        lc.train(mlp((6, 3)), data("cross-entropy", 8), workers=2)


def failing_train(**args):
    """A stand-in for ``train`` whose worker 1 fails after joining the group."""
    import torch
    import torch.distributed as dist

    if args["workers"].rank == 1:
        raise ValueError("boom in worker 1")
    dist.all_reduce(torch.zeros(1))
    return "rank 0 was not supposed to finish"


def test_failing_worker_is_reported_and_stopped():
    pytest.importorskip("torch.distributed")
    from lincompile.distributed import data_parallel

    with pytest.raises(lc.LincompileError, match="worker 1: boom in worker 1"):
        data_parallel(failing_train, {"workers": 2, "target": "onnx"})
    no_children_left()
