"""scikit-learn's linear models and StandardScaler, as skl2onnx writes them (``ai.onnx.ml``
Scaler, LinearRegressor, LinearClassifier; SGDClassifier as MatMul + Add): import, train with
``lincompile train`` and write back a drop-in copy.

The oracles are independent of lincompile: scikit-learn's own ``predict``/
``decision_function``/``predict_proba``, onnxruntime running the original and the trained
files, and torch taking the same optimizer steps from the weights read here straight from the
file's node attributes and initializers. Skipped, with the reason, without scikit-learn and
skl2onnx (the ``[producers]`` extra).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from conftest import TARGETS
from onnx import helper, numpy_helper
from test_producers import WARNINGS, chain_from_file, rel

import lincompile as lc
from lincompile.cli import main

pytest.importorskip("sklearn", reason="scikit-learn is not installed (the [producers] extra)")
pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (the [producers] extra)")

RNG = np.random.default_rng(11)
Z = RNG.standard_normal((30, 4))
X = (Z * [1, 2, 0.5, 3] + [0.5, -1, 2, 0]).astype(np.float32)   # features to standardize
Y3 = np.argmax(Z[:, :3] + 0.5 * RNG.standard_normal((30, 3)), 1)
Y2 = (Z[:, 0] - Z[:, 1] + 0.5 * RNG.standard_normal(30) > 0).astype(np.int64)
YR = (X @ np.array([[1.5, -0.5], [0.3, 2.0], [-1.0, 0.7], [0.2, 0.1]]) + [0.4, -0.2]
      + 0.1 * RNG.standard_normal((30, 2)))


def estimator(name: str):
    """(estimator, y, kind): kind is the loss family: multi, binary or mse."""
    from sklearn.linear_model import (
        LinearRegression,
        LogisticRegression,
        Ridge,
        RidgeClassifier,
        SGDClassifier,
    )
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return {
        "scaler_mlp": (make_pipeline(StandardScaler(), MLPClassifier(
            (5,), max_iter=20, random_state=0)), Y3, "multi"),
        "scaler_logreg3": (make_pipeline(StandardScaler(), LogisticRegression()), Y3, "multi"),
        "logreg2": (LogisticRegression(C=0.5), Y2, "binary"),
        "linreg1": (LinearRegression(), YR[:, 0], "mse"),
        "linreg2": (LinearRegression(), YR, "mse"),
        "ridge": (Ridge(alpha=2.0), YR[:, 1], "mse"),
        "sgd3": (SGDClassifier(random_state=0, max_iter=20), Y3, "multi"),
        "sgd2": (SGDClassifier(random_state=0, max_iter=20), Y2, "binary"),
        "svc2": (LinearSVC(), Y2, "binary"),
        "ridgec3": (RidgeClassifier(), Y3, "multi"),
        # skl2onnx stacks its two outputs per row into one column: Reshape [-1, 1]
        "mlpreg2": (MLPRegressor(hidden_layer_sizes=(5,), max_iter=20, random_state=0), YR,
                    "mse"),
    }[name]


#: The classifier head each file ends in: what cross-entropy trains the logits as.
HEADS = {"scaler_mlp": "softmax", "scaler_logreg3": "softmax", "logreg2": "sigmoid",
         "sgd3": "scores", "sgd2": "sigmoid", "svc2": "sigmoid", "ridgec3": "scores",
         "mlpreg2": "none"}
#: What onnxruntime's ``probabilities`` output is, from the logits z: the probabilities, or
#: (no post-transform) the scores [−z, z], z as one column, or z.
ORT_SCORES = {"sgd2": "pair", "svc2": "column", "sgd3": "scores", "ridgec3": "scores"}
#: More forms, imported and written back (not trained by the CLI here).
MORE = ["sgd2", "svc2", "ridgec3"]
MODELS = ["scaler_mlp", "scaler_logreg3", "logreg2", "linreg1", "linreg2", "ridge", "sgd3",
          "mlpreg2"]


def sk_file(name: str, tmp_path, zipmap: bool = False):
    """The fitted estimator, its skl2onnx file (target_opset 18) and its loss family."""
    from skl2onnx import to_onnx

    est, y, kind = estimator(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are enough
        est.fit(X, y)
    options = {} if kind == "mse" or name == "svc2" else {"zipmap": zipmap}  # svc: no ZipMap
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(to_onnx(est, X[:1], target_opset=18, options=options).SerializeToString())
    return est, path, kind


def ort_run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": x})))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sigmoid(z):
    return np.exp(-np.logaddexp(0, -np.asarray(z, np.float64)))


def close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * max(1, np.abs(want).max()),
                               err_msg=what)


# ---------------------------------------------------------------------------- (a) import
@WARNINGS
@pytest.mark.parametrize("name", MODELS + MORE)
def test_import_computes_the_producers_outputs(name, tmp_path):
    est, path, kind = sk_file(name, tmp_path)
    g = lc.load_onnx(path)
    head = json.loads(g.meta.get("lincompile.head", "{}")).get("kind")
    assert head == HEADS.get(name), (name, head)
    ort_out = ort_run(path, X)
    for target in TARGETS:
        out = lc.compile(g, target).run({"X": X})[g.outputs[0].name]
        what = f"{name} on {target}"
        if kind == "mse":  # the regression itself (the file's rows stacked, for mlpreg2)
            close(out, est.predict(X).reshape(len(X), -1), what)
            close(out, ort_out["variable"].reshape(out.shape), what + " vs onnxruntime")
            continue
        z = out[:, 0] if kind == "binary" else out
        if hasattr(est, "decision_function"):  # the logits are the decision function
            close(z, est.decision_function(X), what)
        probs = np.stack([sigmoid(-z), sigmoid(z)], 1) if kind == "binary" else softmax(z)
        if hasattr(est, "predict_proba"):
            close(probs, est.predict_proba(X), what + " predict_proba")
        # onnxruntime's scores (post-transformed where the file says so) from these logits
        want = {"pair": lambda: np.stack([-z, z], 1), "column": lambda: z[:, None],
                "scores": lambda: z}.get(ORT_SCORES.get(name), lambda: probs)()
        close(want, ort_out["probabilities"], what + " vs onnxruntime")
        labels = np.argmax(probs, 1)
        assert np.array_equal(ort_out["label"], est.classes_[labels]), what


@WARNINGS
def test_scaler_is_exact_in_float32(tmp_path):
    """StandardScaler alone: (x − offset) · scale, bit for bit as onnxruntime and numpy."""
    from skl2onnx import to_onnx
    from sklearn.preprocessing import StandardScaler

    path = tmp_path / "scaler.onnx"
    path.write_bytes(to_onnx(StandardScaler().fit(X), X[:1], target_opset=18)
                     .SerializeToString())
    node = onnx.load(path).graph.node[0]
    at = {a.name: np.array(a.floats, np.float32) for a in node.attribute}
    want = (X - at["offset"]) * at["scale"]
    assert np.array_equal(ort_run(path, X)["variable"], want)
    g = lc.load_onnx(path)
    assert not g.trainable() and "lincompile.params" not in g.meta
    for target in TARGETS:
        got = lc.compile(g, target).run({"X": X})["variable"]
        assert got.dtype == np.float32 and np.array_equal(got, want), target


# ---------------------------------------------------------------------------- torch oracle
def attributes(path) -> dict[str, dict[str, np.ndarray]]:
    """Node name → its float-list attributes, read from the file."""
    return {n.name: {a.name: np.array(a.floats, np.float32) for a in n.attribute
                     if a.type == onnx.AttributeProto.FLOATS}
            for n in onnx.load(path).graph.node}


def twin(path, name: str):
    """The torch model of the file (its own weights, read here), and a function reading the
    same parameters from a file: ``(module, file_params(path) -> {torch name: array})``."""
    import torch

    at = attributes(path)
    inits = _inits(path)
    if name in ("scaler_mlp", "mlpreg2"):
        body, mapping = chain_from_file(path, ["relu"])
        read = lambda p: {k: f(_inits(p)[src]) for k, (src, f) in mapping.items()}
    elif name.startswith("sgd"):   # MatMul of coef [C_in, K], Add of intercept [K]
        body = torch.nn.Linear(*inits["coef"].shape)
        read = lambda p: {"weight": _inits(p)["coef"].T,
                          "bias": _inits(p)["intercept"].reshape(-1)}
    else:
        node = "LinearClassifier" if "LinearClassifier" in at else "LinearRegressor"

        def read(p):
            a = attributes(p)[node]
            b = a["intercepts"]
            w = a["coefficients"].reshape(len(b), -1)
            if name == "logreg2":   # [−w; w], [−b, b]: trained as the one row w, b
                assert np.array_equal(w[0], -w[1]) and b[0] == -b[1]
                w, b = w[1:], b[1:]
            return {"weight": w, "bias": b}
        w = read(path)["weight"]
        body = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        for k, v in read(path).items():
            body.state_dict()[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))
    if "Scaler" not in at:
        return body, read

    class Scaler(torch.nn.Module):   # constant: (x − offset) · scale
        def forward(self, x):
            return (x - torch.from_numpy(at["Scaler"]["offset"])) * \
                torch.from_numpy(at["Scaler"]["scale"])

    return (torch.nn.Sequential(Scaler(), body),
            lambda p: {f"1.{k}": v for k, v in read(p).items()})


def _inits(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


TRAIN = {"multi": ("cross-entropy", "adam", 0.02), "binary": ("cross-entropy", "adam", 0.05),
         "mse": ("mse", "sgd", 0.05)}
EPOCHS = 3


def torch_steps(module, kind: str, y):
    """EPOCHS full-batch steps of torch's optimizer and loss; returns the final parameters."""
    import torch
    import torch.nn.functional as F

    _, opt, lr = TRAIN[kind]
    o = (torch.optim.Adam if opt == "adam" else torch.optim.SGD)(module.parameters(), lr=lr)
    x = torch.from_numpy(X)
    t = torch.from_numpy(np.asarray(y))
    for _ in range(EPOCHS):
        o.zero_grad()
        out = module(x)
        if kind == "binary":   # one logit column z: binary cross-entropy
            lv = F.binary_cross_entropy_with_logits(out[:, 0], t.float())
        elif kind == "multi":
            lv = F.cross_entropy(out, t)
        else:
            lv = F.mse_loss(out, t.float().reshape(out.shape))
        lv.backward()
        o.step()
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def without_parameters(path) -> onnx.ModelProto:
    """The file with its trainable attributes and initializers emptied: what must not change."""
    m = onnx.load(path)
    for n in m.graph.node:
        for a in n.attribute:
            if a.name in ("coefficients", "intercepts"):
                del a.floats[:]
    for t in m.graph.initializer:
        if t.name.startswith(("coef", "intercept")):
            t.ClearField("raw_data")
            t.ClearField("float_data")
    return m


# ---------------------------------------------------------------------------- (b) train
@WARNINGS
@pytest.mark.parametrize("name,target", [(m, "onnx") for m in MODELS] + [
    (m, t) for m in ("scaler_logreg3", "logreg2") for t in TARGETS if t not in ("onnx",)])
def test_cli_train_writes_a_drop_in_trained_like_torch(name, target, tmp_path, capsys):
    pytest.importorskip("torch")
    est, path, kind = sk_file(name, tmp_path, zipmap=name == "scaler_logreg3")
    # other targets than the fit's: a least-squares fit has no gradient on its own data
    y = {"multi": Y3, "binary": Y2}.get(kind, estimator(name)[1] + 1.0)
    data = tmp_path / "data.npz"
    np.savez(data, x=X, y=y)
    module, file_params = twin(path, name)
    want = torch_steps(module, kind, y)

    out = tmp_path / "trained.onnx"
    loss, opt, lr = TRAIN[kind]
    assert main(["train", str(path), "--data", str(data), "-o", str(out), "--loss", loss,
                 "--optimizer", opt, "--lr", str(lr), "--epochs", str(EPOCHS), "--batch-size",
                 str(len(X)), "--val-split", "0", "--target", target]) == 0
    capsys.readouterr()
    got = file_params(out)
    assert got.keys() == want.keys()
    for k in want:
        assert rel(got[k], want[k]) <= 1e-4, (name, k, rel(got[k], want[k]))
        assert rel(got[k], file_params(path)[k]) > 1e-4, (name, k, "did not train")
    # a drop-in: same inputs, outputs and labels; only the parameters changed
    assert without_parameters(out) == without_parameters(path)
    a, b = ort_run(path, X), ort_run(out, X)
    assert list(a) == list(b)
    import torch

    with torch.no_grad():
        module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                for k, v in want.items()})
        logits = module(torch.from_numpy(X)).numpy()
    if kind == "mse":
        close(b["variable"].reshape(logits.shape), logits, name)
        assert b["variable"].shape == a["variable"].shape   # the file's own output shape
        return
    label = "output_label" if "output_label" in b else "label"
    probs = (np.concatenate([sigmoid(-logits), sigmoid(logits)], 1) if kind == "binary" else
             softmax(logits))
    assert np.array_equal(b[label], est.classes_[np.argmax(probs, 1)])
    if name != "sgd3":   # SGDClassifier's file outputs its scores, the others probabilities
        p = b["output_probability"] if "output_probability" in b else b["probabilities"]
        if isinstance(p, list):   # ZipMap: one {class: probability} per row
            p = np.array([[row[c] for c in est.classes_] for row in p])
        close(p, probs, name + " probabilities")


# ---------------------------------------------------------------------------- (c) round trip
@WARNINGS
@pytest.mark.parametrize("name", MODELS + MORE)
def test_write_back_of_the_start_values_is_bit_for_bit(name, tmp_path):
    _, path, _ = sk_file(name, tmp_path, zipmap=True)
    g = lc.load_onnx(path)
    start = {v.name: g.params[v.name].data for v in g.trainable()}
    dst = lc.write_trained(path, start, tmp_path / "same.onnx")
    bits = lambda a: np.ascontiguousarray(a).view(np.uint8).tobytes()
    a, b = attributes(path), attributes(dst)
    assert {k: {n: bits(v) for n, v in d.items()} for k, d in a.items()} == \
        {k: {n: bits(v) for n, v in d.items()} for k, d in b.items()}
    ia, ib = _inits(path), _inits(dst)
    assert {k: (v.dtype, bits(v)) for k, v in ia.items()} == \
        {k: (v.dtype, bits(v)) for k, v in ib.items()}
    if not name.startswith(("sgd", "scaler_mlp", "mlpreg")):   # attributes only: the same
        assert onnx.load(dst) == onnx.load(path)


def test_pair_form_writes_back_both_rows(tmp_path):
    """The two-class form: the trained row w goes back as [−w; w], b as [−b, b]."""
    _, path, _ = sk_file("logreg2", tmp_path)
    g = lc.load_onnx(path)
    w, b = g.params["LinearClassifier.weight"].data, g.params["LinearClassifier.bias"].data
    assert w.shape == (1, 4) and b.shape == (1,)
    new = {"LinearClassifier.weight": w * 2 + 1, "LinearClassifier.bias": b - 3}
    at = attributes(lc.write_trained(path, new, tmp_path / "t.onnx"))["LinearClassifier"]
    want_w = (w * 2 + 1).astype(np.float32)
    assert np.array_equal(at["coefficients"], np.concatenate([-want_w, want_w]).ravel())
    assert np.array_equal(at["intercepts"], np.concatenate([-(b - 3), b - 3]))


def test_info_and_export_say_where_attribute_parameters_live(tmp_path, capsys):
    """`info` and `export-training` name the node attribute and its form for each parameter."""
    _, path, _ = sk_file("logreg2", tmp_path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(file: LinearClassifier.coefficients, as [-P; P])" in out
    assert main(["export-training", str(path), "-o", str(tmp_path / "t.onnx"), "--loss",
                 "cross-entropy", "--optimizer", "sgd", "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "LinearClassifier.bias (from LinearClassifier.intercepts, as [-P; P])" in out


# ---------------------------------------------------------------------------- errors
def _with_attr(path, op: str, **attrs):
    m = onnx.load(path)
    node = next(n for n in m.graph.node if n.op_type == op)
    for k, v in attrs.items():
        old = [a for a in node.attribute if a.name == k]
        if old:
            node.attribute.remove(old[0])
        node.attribute.append(helper.make_attribute(k, v))
    return m


@WARNINGS
@pytest.mark.parametrize("model,op,attrs,words", [
    ("scaler_logreg3", "LinearClassifier", {"post_transform": "PROBIT"},
     ["post_transform PROBIT", "SOFTMAX"]),
    ("scaler_logreg3", "LinearClassifier", {"post_transform": "SOFTMAX_ZERO"},
     ["post_transform SOFTMAX_ZERO"]),
    ("scaler_logreg3", "LinearClassifier", {"post_transform": "LOGISTIC"},
     ["one-vs-rest", "[-w; w]"]),
    ("logreg2", "LinearClassifier", {"coefficients": [1.0, 2, 3, 4], "intercepts": [0.5]},
     ["one coefficient row"]),
    ("linreg2", "LinearRegressor", {"post_transform": "SOFTMAX"}, ["post_transform SOFTMAX"]),
    ("scaler_logreg3", "Scaler", {"offset": [0.0, 1.0]}, ["offset (2 values)", "scale (4)"]),
])
def test_unsupported_attributes_are_one_line(model, op, attrs, words, tmp_path, capsys):
    _, path, _ = sk_file(model, tmp_path)
    bad = tmp_path / "bad.onnx"
    onnx.save(_with_attr(path, op, **attrs), bad)
    with pytest.raises(lc.UnsupportedOpError) as e:
        lc.load_onnx(bad)
    msg = str(e.value)
    assert "\n" not in msg and f"ai.onnx.ml.{op}' (node '{op}'" in msg, msg
    assert all(w in msg for w in words), msg
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and op in err
