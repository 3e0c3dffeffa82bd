"""Bad feeds give a lincompile error naming the tensor; validate catches NaN and drift."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mlp

import lincompile as lc
from lincompile.validate import compare


@pytest.fixture
def exe(target):
    return lc.compile(lc.training_graph(mlp((6, 5, 3)), optimizer=lc.SGD(0.1)), target)


def good_feeds(exe, n=4):
    return lc.random_feeds(exe.graph, batch=n)


def test_missing_feed(exe):
    feeds = good_feeds(exe)
    del feeds["fc1.bias"]
    with pytest.raises(lc.FeedError, match=r"missing feed\(s\) \['fc1.bias'\].*float32\[5\]"):
        exe.run(feeds)


def test_unknown_feed(exe):
    with pytest.raises(lc.FeedError, match=r"unknown feed\(s\) \['lr2'\]"):
        exe.run({**good_feeds(exe), "lr2": np.float32(1)})


def test_wrong_dtype(exe):
    feeds = good_feeds(exe)
    feeds["x"] = feeds["x"].astype(np.float64)
    with pytest.raises(lc.FeedError, match="feed 'x' has dtype float64, expected float32"):
        exe.run(feeds)


def test_wrong_shape(exe):
    feeds = good_feeds(exe)
    feeds["fc1.weight"] = feeds["fc1.weight"].T.copy()
    with pytest.raises(lc.FeedError, match=r"feed 'fc1.weight' has shape \[6, 5\], expected "
                                           r"\[5, 6\]"):
        exe.run(feeds)


def test_inconsistent_batch(exe):
    feeds = good_feeds(exe)
    feeds["target"] = feeds["target"][:2]
    with pytest.raises(lc.FeedError, match="feed 'target' has N=2 but feed 'x' has N=4"):
        exe.run(feeds)


def test_labels_out_of_range(exe):
    feeds = good_feeds(exe)
    feeds["target"][0] = 3
    with pytest.raises(lc.FeedError, match=r"class labels outside \[0, 3\)"):
        exe.run(feeds)


def test_python_scalar_lr_and_non_contiguous_input(exe):
    feeds = good_feeds(exe)
    ref = exe.run(feeds)
    feeds["lr"] = float(feeds["lr"])
    feeds["x"] = np.asfortranarray(feeds["x"])
    feeds["fc1.weight"].setflags(write=False)
    out = exe.run(feeds)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-6)


def test_validate_fails_on_nan_and_names_the_tensor():
    ref = np.ones(3)
    row = compare("onnx", "fc1.weight.next", np.array([1, np.nan, 1], np.float32), ref)
    assert not row.ok and "NaN" in row.note and row.output == "fc1.weight.next"
    assert not compare("onnx", "y", np.array([1, np.inf, 1], np.float32), ref).ok
    assert not compare("onnx", "y", None, ref).ok
    assert not compare("onnx", "y", ref * (1 + 2e-5), ref).ok
    assert compare("onnx", "y", ref * (1 + 5e-6), ref).ok


def test_validate_report_flags_nan_from_a_backend():
    g = lc.Graph("m")
    x = g.input("x", ["N", 3])
    g.output(g.mul(x, g.const(np.array([1, np.inf, 1], np.float32))))
    report = lc.validate(g, ["onnx"], feeds={"x": np.zeros((2, 3), np.float32)})
    assert not report.ok and "NaN or Inf" in str(report)
    with pytest.raises(lc.ValidationError, match="onnx:mul"):
        report.raise_if_failed()


def test_validate_report_table():
    report = lc.validate(mlp((4, 3)), ["reference", "onnx"])
    assert report.ok
    text = str(report)
    assert "target" in text and "fc1" in text and text.count("ok") == 2
