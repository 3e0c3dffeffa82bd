"""`lincompile compile`: C sources + Makefile from an ONNX file, built with make and called
from ctypes like a C user would."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

import numpy as np
import pytest
from c_helpers import train_with_library
from helpers import mlp

import lincompile as lc
from lincompile.validate import compare

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                                reason="needs make and cc")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lincompile", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_compile_model_and_training_step_then_call_the_library(tmp_path):
    model = mlp((6, 5, 3), seed=2, name="tiny")
    lc.save_onnx(model, tmp_path / "tiny.onnx")
    r = cli("compile", tmp_path / "tiny.onnx", "--target", "c", "-o", tmp_path / "out",
            "--train", "--loss", "cross-entropy", "--optimizer", "sgd", "--lr", "0.1")
    assert r.returncode == 0, r.stderr
    assert "model_forward, model_forward_argv, model_train_step" in r.stdout
    build = subprocess.run(["make", "-C", str(tmp_path / "out")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    lib = ctypes.CDLL(str(tmp_path / "out" / "libmodel.so"))
    lib.model_workspace_size.restype = ctypes.c_size_t
    n = 7
    x = np.random.default_rng(0).standard_normal((n, 6)).astype(np.float32)
    params = [model.params[k].data for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]
    out = np.full((n, 3), np.nan, np.float32)
    ws = np.zeros(lib.model_workspace_size(ctypes.c_long(n)) + 64, np.uint8)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)
    lib.model_forward(ctypes.c_long(n), ptr(x), *map(ptr, params), ptr(out), ptr(ws))
    want = lc.compile(model, "reference", dtype="float64").run({"x": x})["fc2"]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    # its one-array twin: the same pointers packed in order, the same bits
    out2 = np.full((n, 3), np.nan, np.float32)
    argv = (ctypes.c_void_p * 7)(*(a.ctypes.data for a in (x, *params, out2, ws)))
    lib.model_forward_argv(ctypes.c_long(n), argv)
    np.testing.assert_array_equal(out2, out)
    # the training step it built: from model_train_step_init's state, 4 steps, each output
    # (feeding the library's own state back) within the bound of the float64 reference
    t = lc.training_graph(model, loss="cross-entropy", optimizer=lc.SGD(0.1))
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((b, 6)).astype(np.float32),
                "target": rng.integers(0, 3, b), "lr": np.float32(0.1)} for b in (7, 1, 130, 7)]
    for i, (got, ref) in enumerate(train_with_library(lib, "train_step", t, batches)):
        bad = [r for r in (compare("c", k, got[k], v) for k, v in ref.items()) if not r.ok]
        assert not bad, f"model_train_step, step {i}: {bad}"


def test_compile_an_exported_training_file(tmp_path):
    lc.save_onnx(lc.training_graph(mlp((6, 3)), optimizer=lc.Adam()), tmp_path / "t.onnx")
    r = cli("compile", tmp_path / "t.onnx", "-o", tmp_path / "out", "--prefix", "net")
    assert r.returncode == 0, r.stderr
    assert "net_train_step" in (tmp_path / "out" / "model.h").read_text()


@pytest.mark.parametrize("args, message", [
    (["--train"], "--train needs --loss and --optimizer"),
    (["--loss", "mse"], "need --train"),
    (["--prefix", "bad name"], "prefix"),
])
def test_compile_usage_errors(tmp_path, args, message):
    lc.save_onnx(mlp((6, 3)), tmp_path / "m.onnx")
    r = cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "out", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
