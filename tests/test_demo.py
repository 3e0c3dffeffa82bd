"""``lincompile demo`` and the bundled digits, run as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lincompile import datasets


def test_bundled_digits_are_sklearns_digits():
    images, labels = datasets.load_digits(scale=False)
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    assert np.array_equal(np.bincount(labels), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    sk = pytest.importorskip("sklearn.datasets")
    d = sk.load_digits()
    assert np.array_equal(images, d.data) and np.array_equal(labels, d.target)


def test_split_is_seeded_and_disjoint():
    x, y = datasets.load_digits()
    assert np.allclose(x.max(), 1.0) and x.dtype == np.float32
    a, b = datasets.split(x, y, 0.2, seed=3), datasets.split(x, y, 0.2, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    xtr, _, xte, _ = a
    assert len(xtr) + len(xte) == 1797 and len(xte) == 359
    rows = {r.tobytes() for r in xtr}
    assert sum(r.tobytes() in rows for r in xte) < 5  # (the data holds a few duplicates)
    assert not np.array_equal(datasets.split(x, y, 0.2, seed=4)[3], a[3])


@pytest.mark.parametrize("optimizer, epochs", [("adam", 10), ("sgd", 4), ("adamw", 4)])
def test_demo_trains_above_90_percent(tmp_path, optimizer, epochs):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "lincompile", "demo", "--epochs", str(epochs),
                        "--optimizer", optimizer, "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = re.findall(r"^epoch\s+(\d+)/(\d+) \[#+\] loss ([\d.]+)  test accuracy\s+([\d.]+)%$",
                       r.stdout, re.M)
    assert [int(e) for e, *_ in lines] == list(range(1, epochs + 1))
    losses = [float(loss) for _, _, loss, _ in lines]
    assert losses[-1] < losses[0] / 3
    m = re.search(r"^final test accuracy: ([\d.]+)% \((\d+)/(\d+) held-out", r.stdout, re.M)
    assert m and float(m[1]) > 90 and int(m[3]) == 359
    assert float(lines[-1][3]) == float(m[1])

    # The trained model, checked on its own: onnxruntime on the held-out split.
    model_path, train_path = out / "digits_mlp.onnx", out / "digits_mlp_train.onnx"
    assert f"wrote {train_path}" in r.stdout and f"wrote {model_path}" in r.stdout
    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    x, y = datasets.load_digits()
    *_, x_test, y_test = datasets.split(x, y, 0.2, seed=0)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    pred = np.argmax(sess.run(None, {"x": x_test})[0], axis=1)
    assert int(np.sum(pred == y_test)) == int(m[2])

    train = onnx.load(train_path)
    names = [i.name for i in train.graph.input]
    assert names[:2] == ["x", "target"] and names[-1] == "lr"
    meta = {p.key: p.value for p in train.metadata_props}
    assert meta["lincompile.role"] == "training" and optimizer in meta["lincompile.optimizer"]
