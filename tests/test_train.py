"""``lincompile train`` / ``lc.train``: real model files trained on the shipped digits.

Oracles: torch trained from the file's own weights with the same settings, split and
minibatch order; onnxruntime running the written model (its own head and label output).
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TARGETS
from helpers import mlp
from onnx import numpy_helper

import lincompile as lc
from lincompile.datasets import load_digits

WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                      "ignore::UserWarning")
SEED, VAL, EPOCHS, BATCH, LR = 0, 0.2, 2, 64, 0.1
CPU_TARGETS = [t for t in TARGETS if t != "cuda"]


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lincompile", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def split_and_batches(n: int):
    """The documented order: a seeded permutation holds out the first round(n·val) rows;
    each epoch draws a permutation of the rest from a generator seeded the same way."""
    order = np.random.default_rng(SEED).permutation(n)
    n_val = round(n * VAL)
    val, tr = order[:n_val], order[n_val:]
    rng = np.random.default_rng(SEED)
    epochs = []
    for _ in range(EPOCHS):
        perm = rng.permutation(len(tr))
        epochs.append([perm[i:i + BATCH] for i in range(0, len(tr), BATCH)])
    return tr, val, epochs


# ---------------------------------------------------------------------------- the models
def sklearn_model(tmp_path, x, y):
    """skl2onnx MLPClassifier (ReLU, zipmap on): weights [C_in, C_out] for MatMul, biases
    [1, C_out], then Softmax, ArgMax, ArrayFeatureExtractor, ZipMap and a label output."""
    nn_mod = pytest.importorskip("sklearn.neural_network")
    skl2onnx = pytest.importorskip("skl2onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = nn_mod.MLPClassifier((16,), max_iter=2, random_state=0).fit(x[:300], y[:300])
    path = tmp_path / "sk.onnx"
    path.write_bytes(skl2onnx.to_onnx(clf, x[:1]).SerializeToString())
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    layers = [(w["coefficient"], w["intercepts"]), (w["coefficient1"], w["intercepts1"])]
    return path, layers, "relu", "output_label"


def torch_model(tmp_path, x, y):
    """A torch MLP with LayerNorm and GELU, exported by the default exporter (fixed batch)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        net[1].weight.normal_(1, 0.1), net[1].bias.normal_(0, 0.1)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (torch.zeros(1, 64),), path, input_names=["x"], output_names=["y"])
    return path, net, None, "y"


def torch_from(layers, act):
    """A torch MLP holding the given (weight [C_in, C_out], bias) layers."""
    import torch

    mods = []
    for i, (w, b) in enumerate(layers):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.reshape(-1).copy()))
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append({"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh()}[act])
    return torch.nn.Sequential(*mods)


def torch_accuracy(net, x, y) -> tuple[float, list[float]]:
    """Train ``net`` like lincompile train (SGD, momentum 0.9) and score it held out."""
    import torch

    tr, val, epochs = split_and_batches(len(x))
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    net.train()
    for batches in epochs:
        total = 0.0
        for b in batches:
            idx = torch.from_numpy(tr[b])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        losses.append(total / len(tr))
    net.eval()
    with torch.no_grad():
        pred = net(xt[torch.from_numpy(val)]).argmax(1).numpy()
    return float(np.mean(pred == y[val])), losses


def ort_accuracy(path, output: str, x, y) -> float:
    _, val, _ = split_and_batches(len(x))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    step = inp.shape[0] if isinstance(inp.shape[0], int) else len(val)  # a file's fixed batch
    out = np.concatenate([sess.run([output], {inp.name: x[val[i:i + step]]})[0]
                          for i in range(0, len(val), step)])
    pred = out if out.ndim == 1 else np.argmax(out, axis=1)
    return float(np.mean(pred.reshape(-1) == y[val]))


MODELS = {"sklearn": sklearn_model, "torch-gelu-layernorm": torch_model}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    x, y = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


@WARNINGS
@pytest.mark.parametrize("kind", list(MODELS))
def test_train_reaches_torchs_accuracy_on_every_cpu_target(kind, digits, tmp_path):
    torch = pytest.importorskip("torch")
    data, x, y = digits
    path, ref, act, output = MODELS[kind](tmp_path, x, y)
    net = torch_from(ref, act) if isinstance(ref, list) else ref
    torch.manual_seed(0)
    want, want_losses = torch_accuracy(net, x, y)
    assert want > 0.8

    args = ["--data", data, "--loss", "cross-entropy", "--optimizer", "sgd", "--lr", LR,
            "--momentum", 0.9, "--epochs", EPOCHS, "--batch-size", BATCH]
    r = cli("train", path, "-o", tmp_path / "onnx.onnx", *args)
    assert r.returncode == 0, r.stderr
    lines = re.findall(r"^epoch +(\d)/2 \[#+\] loss ([\d.]+)  val accuracy +([\d.]+)%$",
                       r.stdout, re.M)
    assert [int(e) for e, *_ in lines] == [1, 2], r.stdout
    np.testing.assert_allclose([float(v) for _, v, _ in lines], want_losses, rtol=2e-3)
    final = re.search(r"^final val accuracy: ([\d.]+)% \((\d+)/359 rows\) after 2 epochs in "
                      r"[\d.]+ m?s$", r.stdout, re.M)
    assert final, r.stdout
    got = ort_accuracy(tmp_path / "onnx.onnx", output, x, y)
    assert abs(got - float(final[1]) / 100) < 1e-3
    assert abs(got - want) <= 0.02, (got, want)
    for t in CPU_TARGETS:
        if t == "onnx":
            continue
        out = tmp_path / f"{t}.onnx"
        _, hist = lc.train(path, data, optimizer=lc.SGD(LR, momentum=0.9), epochs=EPOCHS,
                           batch_size=BATCH, target=t, out=out)
        np.testing.assert_allclose(hist.loss, want_losses, rtol=2e-3, err_msg=t)
        assert abs(ort_accuracy(out, output, x, y) - want) <= 0.02, t
    # the source stays as it was; the copy keeps every node, the head included
    src, dst = onnx.load(path), onnx.load(tmp_path / "onnx.onnx")
    assert src.graph.node == dst.graph.node and src.graph.output == dst.graph.output


# ---------------------------------------------------------------------------- data and API
def tiny_model(tmp_path, classes=3, features=4):
    g = lc.Graph("tiny", seed=0)
    g.output(g.linear(g.relu(g.linear(g.input("x", ["N", features]), 8, name="fc1")),
                      classes, name="fc2"), name="logits")
    return lc.save_onnx(g, tmp_path / "tiny.onnx")


def test_fit_feeds_every_row_once_per_epoch_on_cache_lines():
    """fit's minibatches: the documented order (a permutation per epoch from the seeded
    generator, the last batch partial), rows and labels kept together, each batch
    gathered onto 64-byte lines."""
    from lincompile.progress import Progress
    from lincompile.training_loop import fit

    n, batch = 150, BATCH
    x = np.arange(n * 5, dtype=np.float32).reshape(n, 5)[:, ::-1]   # not C-contiguous
    y = np.arange(n, dtype=np.int64)
    t = lc.training_graph(mlp((5, 3)), loss="cross-entropy", optimizer=lc.SGD(0.1))
    seen = []

    def step(xb, yb, lr, state):
        assert xb.ctypes.data % 64 == 0 and xb.flags.c_contiguous
        seen.append((xb.copy(), yb.copy()))
        return 0.0, state

    fit(t, lambda state, xv, yv: 0.0, x, y, x[:1], y[:1], epochs=2, batch_size=batch,
        seed=SEED, target="reference", progress=Progress(None, 2), step=step)
    rng = np.random.default_rng(SEED)
    want = [p[i:i + batch] for p in (rng.permutation(n) for _ in range(2))
            for i in range(0, n, batch)]
    assert [len(b) for b, _ in seen] == [len(w) for w in want] == [64, 64, 22] * 2
    for (xb, yb), idx in zip(seen, want):
        assert np.array_equal(yb, idx) and np.array_equal(xb, x[idx])


def test_python_train_returns_the_trained_graph_and_history(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    path = tiny_model(tmp_path)
    trained, hist = lc.train(path, (x, y), optimizer="adam", epochs=3, batch_size=16,
                             val_split=0, out=tmp_path / "out.onnx")
    assert hist.metric_name == "accuracy" and len(hist.loss) == len(hist.metric) == 3
    assert hist.loss[-1] < hist.loss[0]
    back = lc.load_onnx(tmp_path / "out.onnx")
    for k, p in trained.params.items():
        np.testing.assert_array_equal(back.params[k].data, p.data)
    logits = lc.compile(trained, "reference").run({"x": x})["logits"]
    assert abs(np.mean(np.argmax(logits, 1) == y) - hist.metric[-1]) < 1e-9
    # 50 rows, batch 16: four steps per epoch (the last one of 2 rows), 12 in all
    from lincompile.backends.onnx import OnnxExecutable

    steps, orig = [], OnnxExecutable.run

    def counting(self, feeds, *a, **k):
        if "target" in feeds:
            steps.append(len(feeds["target"]))
        return orig(self, feeds, *a, **k)

    monkeypatch.setattr(OnnxExecutable, "run", counting)
    lc.train(path, (x, y), epochs=3, batch_size=16, val_split=0)
    assert steps == [16, 16, 16, 2] * 3


def test_mse_reports_rmse_and_csv_with_header(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1
    csv = tmp_path / "reg.csv"
    csv.write_text("a,b,c,target\n" + "\n".join(",".join(map(str, r)) for r in np.c_[x, y]))
    g = lc.Graph("reg", seed=0)
    g.output(g.linear(g.input("x", ["N", 3]), 1, name="fc"))
    path = lc.save_onnx(g, tmp_path / "reg.onnx")
    r = cli("train", path, "--data", csv, "-o", tmp_path / "out.onnx", "--loss", "mse",
            "--optimizer", "sgd", "--lr", "0.1", "--epochs", "3", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    rmse = [float(v) for v in re.findall(r"val RMSE ([\d.e-]+)$", r.stdout, re.M)]
    assert len(rmse) == 3 and rmse[-1] < rmse[0]
    assert re.search(r"^final val RMSE: [\d.e-]+ \(8 rows\) after 3 epochs", r.stdout, re.M)


@pytest.fixture
def bad_data(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    files = {"ok": dict(x=x, y=y), "features": dict(x=x[:, :3], y=y),
             "labels": dict(x=x, y=y + 2), "float-labels": dict(x=x, y=y + 0.5),
             "nan": dict(x=np.where(np.eye(20, 4) > 0, np.nan, x), y=y),
             "inf-y": dict(x=x, y=np.where(y == 2, np.inf, y)), "nokey": dict(x=x, z=y),
             "rows": dict(x=x, y=y[:10])}
    paths = {}
    for k, v in files.items():
        paths[k] = tmp_path / f"{k}.npz"
        np.savez(paths[k], **v)
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.csv").write_text("a,b,c,d,label\n")
    (tmp_path / "ragged.csv").write_text("1,2,3,4,0\n1,2,3,0\n")
    (tmp_path / "data.txt").write_text("1,2\n")
    return paths


@pytest.mark.parametrize("data, words", [
    ("features", ["x rows are [3]", "'x' takes [N, 4]"]),
    ("labels", ["label 3 is not a class", "classes: 0..2"]),
    ("float-labels", ["label 0.5 is not an integer"]),
    ("nan", ["x holds nan"]),
    ("inf-y", ["y holds inf"]),
    ("nokey", ["no array 'y'", "holds: x, z", "--x/--y"]),
    ("rows", ["x has 20 rows but y has 10"]),
    ("empty.npz", ["cannot read 'empty.npz' as .npz"]),
    ("empty.csv", ["'empty.csv' has no data rows"]),
    ("ragged.csv", ["row 2 has 4 columns"]),
    ("data.txt", ["neither .npz", "nor .csv"]),
    ("missing.npz", ["no such file"]),
])
def test_bad_data_is_one_line_exit_2(data, words, bad_data, tmp_path, capsys):
    model = tiny_model(tmp_path)
    path = bad_data.get(data, tmp_path / data)
    err = usage_error(capsys, "train", model, "--data", path, "-o", tmp_path / "o.onnx",
                      "--loss", "cross-entropy", "--optimizer", "sgd")
    assert err.startswith("lincompile: error: data: "), err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "o.onnx").exists()


def usage_error(capsys, *args) -> str:
    """``lincompile ARGS`` in this process: exit 2 and one line on stderr, returned."""
    from lincompile.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["-o", "{model}"], ["it is the input file"]),
    (["--optimizer", "none"], ["needs an optimizer"]),
    (["--emit-grads"], ["--emit-grads does not apply"]),
    (["--val-split", "1"], ["--val-split", "in [0, 1)"]),
    (["--target", "gpu"], ["invalid choice: 'gpu'"]),
    (["--logits", "nope"], ["logits 'nope': no tensor of the model"]),
    (["--loss", "mse"], ["y rows are [] but the model's output 'logits' gives [N, 3]"]),
])
def test_train_usage_errors(args, words, bad_data, tmp_path, capsys):
    model = tiny_model(tmp_path)
    base = {"-o": str(tmp_path / "o.onnx"), "--loss": "cross-entropy", "--optimizer": "sgd"}
    extra = [a.format(model=model) for a in args]
    for k in list(base):
        if k in extra:
            del base[k]
    err = usage_error(capsys, "train", model, "--data", bad_data["ok"],
                      *[v for kv in base.items() for v in kv], *extra)
    for w in words:
        assert w in err, err


def test_one_logit_with_cross_entropy_is_refused(tmp_path):
    g = lc.Graph("one", seed=0)
    g.output(g.linear(g.input("x", ["N", 4]), 1, name="fc"))
    with pytest.raises(lc.LincompileError, match="one logit.*--loss mse.*two logits"):
        lc.training_graph(g, loss="cross-entropy", optimizer=lc.SGD())


def test_binary_head_labels_map_to_its_classes_and_frozen_layers_stay(tmp_path):
    """skl2onnx's two-class head with class labels 10 and 11: the data speaks in labels, the
    written copy answers in labels, and a frozen weight is written back unchanged."""
    from test_layout import sk_like

    path = tmp_path / "bin.onnx"
    onnx.save(sk_like(binary=True), path)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((80, 5)).astype(np.float32)
    y = np.where(x[:, 0] + x[:, 1] > 0, 11, 10)
    _, hist = lc.train(path, (x, y), optimizer=lc.SGD(0.1, momentum=0.9), epochs=3,
                       batch_size=16, freeze=["coefficient"], out=tmp_path / "out.onnx")
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "out.onnx")
             .graph.initializer}
    np.testing.assert_array_equal(after["coefficient"], before["coefficient"])
    assert not np.array_equal(after["coefficient1"], before["coefficient1"])
    order = np.random.default_rng(0).permutation(80)
    val = order[:16]
    sess = ort.InferenceSession(tmp_path / "out.onnx", providers=["CPUExecutionProvider"])
    labels = sess.run(["label"], {"X": x[val]})[0].reshape(-1)
    assert set(labels.tolist()) <= {10, 11}
    assert np.mean(labels == y[val]) == pytest.approx(hist.metric[-1])
    with pytest.raises(lc.LincompileError, match="label 3 is not a class.*classes: 10..11"):
        lc.train(path, (x, np.where(y == 10, 3, 11)), epochs=1)
