"""ONNX export: standard ops, one opset, checker-clean, readable, warning-free in ORT."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import mlp

import lincompile as lc
from lincompile.backends.onnx import to_onnx
from lincompile.backends.onnx_builder import OPSET

OPTIMIZERS = [lc.SGD(0.1), lc.SGD(0.1, momentum=0.9, weight_decay=0.1), lc.Adam(), lc.AdamW(),
              None]


def all_graphs():
    yield "model", mlp((6, 5, 3))
    for loss in ("cross-entropy", "mse"):
        for opt in OPTIMIZERS:
            yield f"{loss}-{opt}", lc.training_graph(mlp((6, 5, 3)), loss=loss, optimizer=opt)
    yield "frozen", lc.training_graph(mlp((6, 5, 3)), optimizer=lc.Adam(), frozen=["fc1.weight"],
                                      emit_grads=True)


@pytest.mark.parametrize("portable", [False, True])
def test_files_pass_full_checker_and_run_in_ort(tmp_path, portable):
    for name, g in all_graphs():
        path = lc.save_onnx(g, tmp_path / f"{name}.onnx", portable=portable)
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] \
            == [("", OPSET)]
        domains = {n.domain for n in model.graph.node}
        body_domains = {n.domain for f in model.functions for n in f.node}
        assert body_domains <= {""}, "function bodies use standard ops only"
        assert domains <= ({""} if portable else {"", "lincompile"})
        assert not any("microsoft" in d or "preview" in d for d in domains)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = lc.random_feeds(g, batch=3)
        outs = sess.run(None, feeds)
        ref = lc.compile(g, "reference").run(feeds)
        for o, v in zip(sess.get_outputs(), outs):
            np.testing.assert_allclose(v, ref[o.name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_linear_backward_is_the_three_products():
    """One Linear layer's backward: Gemm(dOut, W), Gemm(dOutᵀ, X), ReduceSum over axis 0."""
    g = lc.Graph("one")
    g.output(g.mse(g.linear(g.input("x", ["N", 4]), 3, name="fc"), g.input("t", ["N", 3])),
             name="loss")
    model = to_onnx(lc.grad(g, of="loss", wrt=["x", "fc.weight", "fc.bias"]))
    nodes = {n.output[0]: n for n in model.graph.node}
    attrs = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    dx, dw, db = nodes["x.grad"], nodes["fc.weight.grad"], nodes["fc.bias.grad"]
    assert (dx.op_type, list(dx.input), attrs(dx)) == (
        "Gemm", ["fc.grad", "fc.weight"], {"transA": 0, "transB": 0})
    assert (dw.op_type, list(dw.input), attrs(dw)) == (
        "Gemm", ["fc.grad", "x"], {"transA": 1, "transB": 0})
    assert db.op_type == "ReduceSum" and db.input[0] == "fc.grad"
    axes = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}[db.input[1]]
    assert axes.tolist() == [0] and attrs(db)["keepdims"] == 0
    fwd = nodes["fc"]
    assert (fwd.op_type, list(fwd.input), attrs(fwd)) == (
        "Gemm", ["x", "fc.weight", "fc.bias"], {"transB": 1})


def test_sgd_training_graph_op_list():
    model = to_onnx(lc.training_graph(mlp((784, 128, 10)), optimizer=lc.SGD(0.1)))
    assert [(n.op_type, n.name) for n in model.graph.node] == [
        ("Gemm", "fc1"), ("Relu", "relu"), ("Gemm", "fc2"),
        ("SoftmaxCrossEntropyLoss", "loss"), ("SoftmaxCrossEntropyGrad", "fc2.grad"),
        ("Gemm", "relu.grad"), ("Gemm", "fc2.weight.grad"), ("ReduceSum", "fc2.bias.grad"),
        ("ReluGrad", "fc1.grad"), ("Gemm", "fc1.weight.grad"), ("ReduceSum", "fc1.bias.grad"),
        ("SGD", "fc1.weight.update"), ("SGD", "fc1.bias.update"),
        ("SGD", "fc2.weight.update"), ("SGD", "fc2.bias.update")]


def test_lr_is_a_required_input_and_metadata():
    t = lc.training_graph(mlp((6, 3)), optimizer=lc.AdamW(0.003))
    model = to_onnx(t)
    assert "lr" in [i.name for i in model.graph.input]
    assert "lr" not in [i.name for i in model.graph.initializer]
    lr = next(i for i in model.graph.input if i.name == "lr")
    assert lr.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(lr.type.tensor_type.shape.dim) == 0
    props = {p.key: p.value for p in model.metadata_props}
    assert props["lincompile.lr"] == "0.003" and props["lincompile.role"] == "training"


def test_sessions_show_no_warnings(tmp_path):
    """onnxruntime at its default (warning) log level prints nothing for our graphs."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path.parent)!r})
        import lincompile as lc, onnxruntime as ort
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from test_onnx_export import all_graphs
        for name, g in all_graphs():
            lc.compile(g, "onnx").run(lc.random_feeds(g, batch=2))
            path = lc.save_onnx(g, {str(tmp_path)!r} + "/" + name + ".onnx")
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        print("done")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "done"
    assert "[W:" not in r.stderr and "[E:" not in r.stderr, r.stderr


@pytest.mark.parametrize("opt", [lc.Adam(1e-3), lc.AdamW(1e-3, weight_decay=0.1)],
                         ids=["adam", "adamw"])
def test_adam_first_step_in_onnxruntime_is_exact(opt):
    """The first step (zero state) is the most sensitive to 1 − β2: float32 β2 = 0.999 alone
    makes ``P.v.next`` 1.3e-5 off; the exported update must stay at float32 rounding."""
    t = lc.training_graph(mlp((12, 8, 3)), loss="mse", optimizer=opt)
    feeds = lc.random_feeds(t, 6, seed=3)
    feeds.update({k: np.zeros_like(v) for k, v in feeds.items() if k.endswith((".m", ".v"))})
    feeds["step"] = np.array(0, np.int64)
    ref = lc.compile(t, "reference", dtype="float64").run(feeds)
    got = lc.compile(t, "onnx").run(feeds)
    for k in ref:
        assert np.linalg.norm(got[k] - ref[k]) <= 1e-6 * np.linalg.norm(ref[k]), k


@pytest.mark.parametrize("op, state, attrs", [
    ("sgd", [], {}), ("sgd", ["velocity"], {"momentum": 0.9}),
    ("adam", ["m", "v", "step"], {})], ids=["sgd", "momentum", "adam"])
def test_updates_without_weight_decay_keep_infinite_parameters(op, state, attrs):
    """torch skips the decay term at weight_decay = 0; an exported 0·p would turn ±Inf into
    NaN."""
    g = lc.Graph("update")
    p, grad = g.input("p", [4]), g.input("grad", [4])
    ins = [g.input(s, [] if s == "step" else [4], "int64" if s == "step" else "float32")
           for s in state]
    res = g.apply(op, [p, grad, *ins, g.input("lr", [])], name="update", **attrs)
    g.output(res[0] if state else res, name="upd")
    feeds = {"p": np.array([np.inf, -np.inf, 1, 2], np.float32),
             "grad": np.array([0.5, 0.5, 0.5, np.nan], np.float32), "lr": np.float32(0.1),
             "velocity": np.zeros(4, np.float32), "m": np.zeros(4, np.float32),
             "v": np.zeros(4, np.float32), "step": np.array(0, np.int64)}
    feeds = {k: feeds[k] for k in ["p", "grad", *state, "lr"]}
    want = lc.compile(g, "reference").run(feeds)["upd"]
    np.testing.assert_array_equal(want[:2], [np.inf, -np.inf])   # as torch
    np.testing.assert_allclose(lc.compile(g, "onnx").run(feeds)["upd"], want, rtol=1e-6)
