"""The ``lincompile`` command line, run as a user runs it (subprocess)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable
from lincompile.cli import COMMANDS


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lincompile", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_usage_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, one line on stderr starting 'lincompile: error:', no traceback."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lincompile: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0]


def mlp(sizes=(12, 8, 5), bias=True, seed=0, name="mlp") -> lc.Graph:
    g = lc.Graph(name, seed=seed)
    h = g.input("x", ["N", sizes[0]])
    for i, n in enumerate(sizes[1:], 1):
        h = g.linear(h, n, bias=bias, name=f"fc{i}")
        if i < len(sizes) - 1:
            h = g.tanh(h)
    g.output(h, name="out")
    return g


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mlp.onnx"
    lc.save_onnx(mlp(), path)
    return path


# ---------------------------------------------------------------------------- basics
def test_version_and_console_script():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"lincompile {lc.__version__}"
    exe = shutil.which("lincompile")
    if exe is None:
        pytest.skip("the lincompile console script is not installed")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"lincompile {lc.__version__}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name):
    r = cli(name, "-h")
    assert r.returncode == 0
    assert f"usage: lincompile {name}" in r.stdout
    assert re.search(rf"example:\n  lincompile {name}\b", r.stdout)


def test_top_level_help_lists_every_command():
    r = cli("-h")
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout
    assert cli().returncode == 2  # no command: help on stderr, usage exit code


@pytest.mark.parametrize("args, words", [
    (["frobnicate"], ["invalid choice", "frobnicate"]),
    (["info"], ["required", "file"]),
    (["info", "missing.onnx"], ["no such file", "missing.onnx"]),
    (["demo", "--epochs", "0"], ["--epochs", "in [1, "]),
    (["export-training", "m.onnx", "-o", "t.onnx", "--loss", "hinge", "--optimizer", "sgd"],
     ["--loss", "hinge"]),
    (["export-training", "m.onnx", "-o", "t.onnx", "--loss", "mse"], ["--optimizer"]),
    (["export-training", "m.onnx", "-o", "t.onnx", "--loss", "mse", "--optimizer", "adam",
      "--betas", "0.9"], ["B1,B2"]),
])
def test_usage_errors_are_one_line_exit_2(args, words, tmp_path):
    assert_usage_error(cli(*args, cwd=tmp_path), *words)


def test_verbose_shows_the_traceback(tmp_path):
    r = cli("info", "missing.onnx", "--verbose", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("lincompile: error: no such file")


def test_corrupt_and_non_onnx_files_are_one_line_errors(tmp_path, model_file):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a protobuf at all\xff\xff")
    (tmp_path / "cut.onnx").write_bytes(model_file.read_bytes()[:200])
    for name in ("junk.onnx", "cut.onnx"):
        for cmd in ("info", "validate", "explain"):
            assert_usage_error(cli(cmd, tmp_path / name))


# ---------------------------------------------------------------------------- export-training
def reference_step(graph: lc.Graph, feeds) -> dict:
    return ReferenceExecutable(graph).run(feeds)


def contract_feeds(train: lc.Graph, lr: float, seed: int = 0) -> dict:
    feeds = lc.random_feeds(train, batch=6, seed=seed)
    feeds.update({k: v for k, v in train.initial_state.items()})
    feeds["lr"] = np.array(lr, np.float32)
    return feeds


@pytest.mark.parametrize("loss, opt_args, optimizer", [
    ("cross-entropy", ["sgd", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "0.01"],
     lc.SGD(0.1, momentum=0.9, weight_decay=0.01)),
    ("mse", ["adam", "--lr", "0.005", "--betas", "0.8,0.99", "--eps", "1e-6"],
     lc.Adam(0.005, betas=(0.8, 0.99), eps=1e-6)),
    ("cross-entropy", ["adamw", "--lr", "0.01"], lc.AdamW(0.01)),
    ("mse", ["sgd"], lc.SGD()),
])
def test_export_training_runs_in_onnxruntime_like_the_reference(
        tmp_path, model_file, loss, opt_args, optimizer):
    out = tmp_path / "train.onnx"
    r = cli("export-training", model_file, "-o", out, "--loss", loss, "--optimizer", *opt_args)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert float(meta["lincompile.lr"]) == pytest.approx(optimizer.lr)
    assert json.loads(meta["lincompile.optimizer"])["type"] == optimizer.op

    # The same training graph built in Python is the oracle, on the same feeds.
    expected = lc.training_graph(mlp(), loss=loss, optimizer=optimizer)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [v.name for v in expected.inputs]
    assert [o.name for o in sess.get_outputs()] == [v.name for v in expected.outputs]
    feeds = contract_feeds(expected, optimizer.lr)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name, want in reference_step(expected, feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(got["fc1.weight.next"], feeds["fc1.weight"])  # it did step


def test_export_training_none_freeze_and_emit_grads(tmp_path, model_file):
    out = tmp_path / "grads.onnx"
    r = cli("export-training", model_file, "-o", out, "--loss", "cross-entropy",
            "--optimizer", "none", "--freeze", "fc1.weight", "fc1.bias")
    assert r.returncode == 0, r.stderr
    proto = onnx.load(out)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    assert inputs == ["x", "target", "fc2.weight", "fc2.bias"]
    assert outputs == ["loss", "fc2.weight.grad", "fc2.bias.grad"]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    model = mlp()
    for k in ("fc1.weight", "fc1.bias"):  # frozen: initializers with the model's values
        np.testing.assert_array_equal(inits[k], model.params[k].data)

    out2 = tmp_path / "sgd_grads.onnx"
    r = cli("export-training", model_file, "-o", out2, "--loss", "mse", "--optimizer", "sgd",
            "--emit-grads")
    assert r.returncode == 0, r.stderr
    outs = [o.name for o in onnx.load(out2).graph.output]
    assert {"fc1.weight.next", "fc1.weight.grad", "fc2.bias.grad"} <= set(outs)


@pytest.mark.parametrize("args, words", [
    (["--optimizer", "sgd", "--eps", "1e-6"], ["--eps", "sgd"]),
    (["--optimizer", "adam", "--momentum", "0.9"], ["--momentum", "adam"]),
    (["--optimizer", "none", "--lr", "0.1"], ["--lr", "none"]),
    (["--optimizer", "sgd", "--freeze", "fc9.weight"], ["fc9.weight", "fc1.weight"]),
    (["--optimizer", "sgd", "--lr", "-1"], ["--lr"]),
])
def test_export_training_input_errors(tmp_path, model_file, args, words):
    r = cli("export-training", model_file, "-o", tmp_path / "t.onnx", "--loss", "mse", *args)
    assert_usage_error(r, *words)
    assert not (tmp_path / "t.onnx").exists()


# ---------------------------------------------------------------------------- info
def parse_params(stdout: str) -> dict[str, tuple[list[int], int, str]]:
    rows = re.findall(r"^  (\S+)\s+float\d+ \[([\d, ]*)\]\s+([\d,]+)  (trainable|frozen)$",
                      stdout, re.M)
    return {n: ([int(d) for d in s.split(", ") if d], int(c.replace(",", "")), k)
            for n, s, c, k in rows}


def test_info_on_a_model(model_file):
    r = cli("info", model_file)
    assert r.returncode == 0, r.stderr
    model = mlp()
    params = parse_params(r.stdout)
    assert set(params) == set(model.params)
    for name, p in model.params.items():  # counts and shapes from the numpy arrays
        assert params[name] == (list(p.data.shape), p.data.size, "trainable")
    total = sum(p.data.size for p in model.params.values())
    assert f"parameters: 4 trainable ({total:,} values), 0 frozen" in r.stdout
    assert "ops: linear ×2, tanh ×1" in r.stdout
    assert "onnx nodes: Gemm ×2, Tanh ×1" in r.stdout
    assert re.search(r"^  x\s+float32 \[N, 12\]$", r.stdout, re.M)


def test_info_on_a_training_graph(tmp_path, model_file):
    out = tmp_path / "t.onnx"
    assert cli("export-training", model_file, "-o", out, "--loss", "cross-entropy",
               "--optimizer", "adam", "--lr", "0.003", "--freeze", "fc1.weight").returncode == 0
    r = cli("info", out)
    assert r.returncode == 0, r.stderr
    model = mlp()
    params = parse_params(r.stdout)
    assert params["fc1.weight"] == ([8, 12], 96, "frozen")
    for k in ("fc1.bias", "fc2.weight", "fc2.bias"):
        assert params[k][1:] == (model.params[k].data.size, "trainable")
    assert len(params) == 4
    assert "training graph" in r.stdout
    assert "lincompile.lr = 0.003" in r.stdout
    assert re.search(r"optimizer state \(7\): .*fc1\.bias\.m, fc1\.bias\.v.*step", r.stdout)
    assert re.search(r"^  step\s+int64\s+\[\]$", r.stdout, re.M)


# ---------------------------------------------------------------------------- validate
def test_validate_passes_on_model_and_training_files(tmp_path, model_file):
    r = cli("validate", model_file, "--batch", "3", "--seed", "7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^reference\s+out\s", r.stdout, re.M)
    assert re.search(r"^onnx\s+out\s.*ok$", r.stdout, re.M)

    out = tmp_path / "t.onnx"
    assert cli("export-training", model_file, "-o", out, "--loss", "mse",
               "--optimizer", "sgd", "--momentum", "0.5").returncode == 0
    r = cli("validate", out, "--targets", "onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = re.findall(r"^onnx\s+(\S+)\s+\S+\s+\S+\s+ok$", r.stdout, re.M)
    train = lc.training_graph(mlp(), "mse", lc.SGD(0.01, momentum=0.5))
    assert rows == [v.name for v in train.outputs]  # every output of the training step
    assert "reference " not in r.stdout


def test_validate_fails_with_exit_1_beyond_the_bound(tmp_path):
    # Catastrophic cancellation: exact in float64, wrong in float32 on every backend.
    g = lc.Graph("cancel")
    x = g.input("x", ["N", 1])
    h = g.apply("linear", [x, g.param("w1", np.array([[1e8 + 8], [-1e8], [1]], np.float32))])
    g.output(g.apply("linear", [h, g.param("w2", np.ones((1, 3), np.float32))]), name="y")
    lc.save_onnx(g, tmp_path / "cancel.onnx")
    r = cli("validate", tmp_path / "cancel.onnx")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^onnx\s+y\s.*FAIL above bound$", r.stdout, re.M)
    assert "FAILED" in r.stdout


def test_validate_unknown_target(model_file):
    assert_usage_error(cli("validate", model_file, "--targets", "reference,tpu"), "tpu")


# ---------------------------------------------------------------------------- explain, demo
def test_explain_through_files(tmp_path, model_file):
    r = cli("explain", model_file)
    assert r.returncode == 0, r.stderr
    assert "fc1.weight.grad = fc1.gradᵀ · x   [8, N]·[N, 12] → [8, 12]" in r.stdout
    out = tmp_path / "t.onnx"
    assert cli("export-training", model_file, "-o", out, "--loss", "mse",
               "--optimizer", "sgd").returncode == 0
    for fmt in ("markdown", "latex"):
        r = cli("explain", out, "--format", fmt)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("fc2.weight") >= 5
    assert "\\begin{align*}" in r.stdout


def test_demo_rejects_a_bad_optimizer():
    assert_usage_error(cli("demo", "--optimizer", "lbfgs"), "lbfgs")



def test_freeze_names_may_come_before_the_model(tmp_path, model_file):
    """``--freeze`` takes one or more names, so argparse alone would take MODEL.onnx as one."""
    out = tmp_path / "t.onnx"
    r = cli("export-training", "--freeze", "fc1.weight", "fc1.bias", model_file, "-o", out,
            "--loss", "mse", "--optimizer", "sgd")
    assert r.returncode == 0, r.stderr
    names = {i.name for i in onnx.load(out).graph.input}
    assert "fc2.weight" in names and not names & {"fc1.weight", "fc1.bias"}
    assert_usage_error(cli("export-training", "--freeze", "fc1.weight", "-o", out, "--loss",
                           "mse", "--optimizer", "sgd"), "required: model")


def test_compile_prints_every_entry_point_of_the_header(tmp_path, model_file):
    r = cli("compile", model_file, "-o", tmp_path / "c", "--train", "--loss", "mse",
            "--optimizer", "sgd", "--momentum", "0.9")
    assert r.returncode == 0, r.stderr
    printed = re.search(r"entry points: (.*) \(documented", r.stdout).group(1).split(", ")
    header = (tmp_path / "c" / "model.h").read_text()
    declared = sorted(set(re.findall(r"\b(model_\w+)\(", header)))
    assert sorted(printed) == declared and len(declared) == 6


def test_output_cut_short_by_the_reader_ends_quietly(model_file):
    """`lincompile explain m.onnx | head -1`: the reader has gone; no traceback, no 'a bug?'
    line, exit 141 (128 + SIGPIPE) as a shell reports it."""
    import os

    r, w = os.pipe()
    os.close(r)   # every write to w fails with EPIPE, as once `head` has exited
    p = subprocess.Popen([sys.executable, "-m", "lincompile", "explain", str(model_file)],
                         stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err
