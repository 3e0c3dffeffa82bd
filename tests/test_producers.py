"""Model files from other producers — scikit-learn (skl2onnx), Keras 3 and both torch
exporters — import, export a training step, validate, and train like torch.

The oracle is torch: a torch model built from the file's own weights (read here, from the
file's nodes and initializers, not through lincompile) takes the same three optimizer steps;
the values lincompile writes back into a copy of the file must equal torch's parameters
(‖Δ‖/‖torch‖ ≤ 1e-4), and so must each step's loss. Each producer is optional (the
``[producers]`` extra); its tests skip with the reason when it is absent.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import lincompile as lc
from lincompile.cli import main
from lincompile.frontends.layout import start_state

REL = 1e-4
WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                      "ignore::UserWarning")
RNG = np.random.default_rng(7)
BATCHES = (5, 3, 4)  # three steps, three batch sizes: the batch dim must be symbolic


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def inits(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


# ---------------------------------------------------------------------------- torch oracle
def chain_from_file(path, acts: list[str]):
    """The torch twin of a MatMul (+ Add) chain file, as skl2onnx and Keras write one: each
    MatMul's initializer W [C_in, C_out] is a Linear of weight Wᵀ, the next Add's initializer
    its bias; ``acts`` follow every Linear but the last. Returns (module, {param: (source,
    to-torch function)})."""
    import torch

    m = onnx.load(path)
    w = inits(path)
    for n in m.graph.node:   # an Identity of an initializer: a parameter of its own, the same
        if n.op_type == "Identity" and n.input[0] in w:   # value (a deduplicated export)
            w[n.output[0]] = w[n.input[0]]
    layers = []
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in w:
            layers.append([n.input[1], None, n.output[0]])
        elif n.op_type == "Add" and layers and layers[-1][1] is None:
            b = next((i for i in n.input if i in w), None)
            if b is not None:
                layers[-1][1] = b
    mods, mapping = [], {}
    for i, (wn, bn, _) in enumerate(layers):
        lin = torch.nn.Linear(*w[wn].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w[wn].T.copy()))
            lin.bias.copy_(torch.from_numpy(w[bn].reshape(-1).copy()))
        k = len(mods)
        mapping[f"{k}.weight"] = (wn, lambda a: a.T)
        mapping[f"{k}.bias"] = (bn, lambda a: a.reshape(-1))
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append(activation(acts[i]))
    return torch.nn.Sequential(*mods), mapping


def activation(name: str):
    import torch

    return {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "logistic": torch.nn.Sigmoid}[name]()


def mapping_by_value(module, path) -> dict:
    """torch parameter → the file's initializer holding it (as is, or transposed)."""
    w, out = inits(path), {}
    for k, p in module.state_dict().items():
        p = p.numpy()
        for name, a in w.items():
            if a.shape == p.shape and np.array_equal(a, p):
                out[k] = (name, lambda a: a)
                break
            if a.ndim == 2 and a.T.shape == p.shape and np.array_equal(a.T, p):
                out[k] = (name, lambda a: a.T)
                break
        else:
            raise AssertionError(f"torch parameter {k} is not an initializer of {path}")
    return out


def torch_loss(kind: str):
    import torch.nn.functional as F

    if kind == "binary":  # one logit column z: binary cross-entropy, as sklearn trains it
        return lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y.float())
    if kind == "mse":
        return F.mse_loss
    return F.cross_entropy


TORCH_OPT = {
    "adam": (lambda: lc.Adam(0.01), lambda p, torch: torch.optim.Adam(p, lr=0.01)),
    "sgd": (lambda: lc.SGD(0.05, momentum=0.9, weight_decay=0.01),
            lambda p, torch: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    "adamw": (lambda: lc.AdamW(0.01), lambda p, torch: torch.optim.AdamW(p, lr=0.01)),
}


def batches(n_in: int, kind: str, width: int):
    out = []
    for n in BATCHES:
        x = RNG.standard_normal((n, n_in)).astype(np.float32)
        y = (RNG.standard_normal((n, width)).astype(np.float32) if kind == "mse" else
             RNG.integers(0, 2 if kind == "binary" else width, n))
        out.append((x, y))
    return out


def assert_trains_like_torch(path, module, mapping, kind: str, opt: str, tmp_path):
    """Three steps of lincompile (reference and onnxruntime), written back into a copy of
    the file, against three torch steps of ``module`` (built from the file's weights)."""
    torch = pytest.importorskip("torch")
    g = lc.load_onnx(path, batch="N")
    loss = "mse" if kind == "mse" else "cross-entropy"
    train = lc.training_graph(g, loss=loss, optimizer=TORCH_OPT[opt][0]())
    width = g.outputs[0].shape[-1]
    data = batches(g.inputs[0].shape[1], kind, width)

    torch_opt = TORCH_OPT[opt][1](module.parameters(), torch)
    fn, want_losses = torch_loss(kind), []
    for x, y in data:
        torch_opt.zero_grad()
        lv = fn(module(torch.from_numpy(x)), torch.from_numpy(y))
        lv.backward()
        torch_opt.step()
        want_losses.append(lv.item())
    for target in ("reference", "onnx"):
        step, state = lc.compile(train, target), start_state(train)
        for (x, y), want in zip(data, want_losses):
            out = step.run({g.inputs[0].name: x, "target": y, **state})
            assert rel(out["loss"], want) <= REL, (target, float(out["loss"]), want)
            state = {k: out.get(f"{k}.next", v) for k, v in state.items()}
        dst = lc.write_trained(path, state, tmp_path / f"trained_{target}.onnx")
        got = inits(dst)
        for k, p in module.state_dict().items():
            src, to_torch = mapping[k]
            assert rel(to_torch(got[src]), p.numpy()) <= REL, (target, k, src)
        a, b = onnx.load(path), onnx.load(dst)
        own = {n.output[0] for n in a.graph.node if n.op_type == "Identity"} & set(got)
        assert [n for n in a.graph.node if n.output[0] not in own] == list(b.graph.node)
        assert a.graph.output == b.graph.output


def assert_cli_works(path, kind: str, tmp_path, capsys):
    """info, export-training (with its state file) and validate, as a user runs them
    (``capsys``: pytest's capsys or capfd)."""
    loss = "mse" if kind == "mse" else "cross-entropy"
    assert main(["info", str(path)]) == 0
    shown = capsys.readouterr().out
    assert ("logits: " in shown) == (kind != "mse"), shown
    t = tmp_path / "t.onnx"
    assert main(["export-training", str(path), "-o", str(t), "--loss", loss, "--optimizer",
                 "adam", "--dynamic-batch"]) == 0
    assert (tmp_path / "t.state.npz").is_file()
    assert main(["validate", str(t)]) == 0
    assert main(["validate", str(path), "--dynamic-batch"]) == 0
    capsys.readouterr()


# ---------------------------------------------------------------------------- scikit-learn
def sklearn_file(est, n_in: int, y, tmp_path, **options):
    skl2onnx = pytest.importorskip("skl2onnx")
    x = RNG.standard_normal((40, n_in)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are enough
        est.fit(x, y(x))
    path = tmp_path / "sk.onnx"
    path.write_bytes(skl2onnx.to_onnx(est, x[:1], options=options).SerializeToString())
    return path, x


@WARNINGS
@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("act", ["relu", "tanh", "logistic"])
def test_sklearn_mlp_classifier(act, classes, zipmap, tmp_path, capsys):
    nn = pytest.importorskip("sklearn.neural_network")
    est = nn.MLPClassifier(hidden_layer_sizes=(7, 5), activation=act, max_iter=5, random_state=0)
    path, x = sklearn_file(est, 6, lambda x: np.argmax(x[:, :classes], 1), tmp_path,
                           zipmap=zipmap)
    kind = "binary" if classes == 2 else "multi"
    head = lc.load_onnx(path).meta["lincompile.head"]
    assert ('"sigmoid"' if kind == "binary" else '"softmax"') in head
    assert_cli_works(path, kind, tmp_path, capsys)
    module, mapping = chain_from_file(path, [act, act])
    assert_trains_like_torch(path, module, mapping, kind, "adam", tmp_path)
    # the written copy is still a classifier: onnxruntime gives labels from its own head
    import onnxruntime as ort

    sess = ort.InferenceSession(tmp_path / "trained_onnx.onnx", providers=["CPUExecutionProvider"])
    labels = sess.run(None, {"X": x})[0]
    assert labels.shape == (40,) and set(labels.tolist()) <= set(range(classes))


@WARNINGS
@pytest.mark.parametrize("act", ["relu", "tanh", "logistic"])
def test_sklearn_mlp_regressor(act, tmp_path, capsys):
    """One output: skl2onnx 1.20 writes a two-output MLPRegressor with a final Reshape to
    [-1, 1], which gives onnxruntime [2N, 1] (sklearn predicts [N, 2])."""
    nn = pytest.importorskip("sklearn.neural_network")
    est = nn.MLPRegressor(hidden_layer_sizes=(6,), activation=act, max_iter=5, random_state=0)
    path, _ = sklearn_file(est, 4, lambda x: x[:, 0] - x[:, 1], tmp_path)
    assert "lincompile.head" not in lc.load_onnx(path).meta
    assert_cli_works(path, "mse", tmp_path, capsys)
    module, mapping = chain_from_file(path, [act])
    assert_trains_like_torch(path, module, mapping, "mse", "sgd", tmp_path)


# ---------------------------------------------------------------------------- Keras 3
@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras runs on {keras.backend.backend()}; these tests need "
                    "KERAS_BACKEND=torch")
    return keras


@WARNINGS
@pytest.mark.parametrize("kind, hidden", [("multi", 6), ("mse", 6), ("multi", 8)])
def test_keras_dense_mlp(kind, hidden, keras, tmp_path, capfd):
    """hidden = 8: two layers of equal width, whose fresh zero biases torch's exporter writes
    as one initializer and an Identity of it: they must still train as two biases."""
    keras.utils.set_random_seed(0)
    last = {"multi": ("softmax", 3), "mse": (None, 2)}[kind]
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(hidden, activation="tanh"),
                              keras.layers.Dense(last[1], activation=last[0])])
    model(np.zeros((2, 5), np.float32))
    path = tmp_path / "keras.onnx"
    model.export(str(path), format="onnx")
    capfd.readouterr()
    assert_cli_works(path, kind, tmp_path, capfd)
    module, mapping = chain_from_file(path, ["relu", "tanh"])
    import torch

    x = RNG.standard_normal((3, 5)).astype(np.float32)
    twin = module(torch.from_numpy(x))  # the twin is the Keras model, up to its softmax
    twin = torch.softmax(twin, 1) if kind == "multi" else twin
    assert rel(twin.detach().numpy(), model(x).detach().cpu().numpy()) < 1e-6
    assert_trains_like_torch(path, module, mapping, kind, "adamw", tmp_path)


# ---------------------------------------------------------------------------- torch
def torch_net(kind: str):
    """``relu``: Linear/ReLU/Tanh with a square bias-free layer and a Softmax head;
    ``zoo``: LayerNorm, both GELUs, SiLU, LeakyReLU, a residual Add, LogSoftmax."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)

    class Zoo(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.norm = nn.Linear(6, 8), nn.LayerNorm(8)
            self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 3)
            self.head = nn.LogSoftmax(dim=-1)

        def body(self, x):
            h = nn.functional.gelu(self.norm(self.fc1(x)))
            h = h + self.fc2(nn.functional.silu(h))
            h = nn.functional.leaky_relu(nn.functional.gelu(h, approximate="tanh"), 0.1)
            return self.fc3(h)

        def forward(self, x):
            return self.head(self.body(x))

    class Relu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 8, bias=False)
            self.fc3, self.head = nn.Linear(8, 3), nn.Softmax(dim=1)

        def body(self, x):
            return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))

        def forward(self, x):
            return self.head(self.body(x))

    net = {"relu": Relu, "zoo": Zoo}[kind]()
    with torch.no_grad():  # distinct values, so each parameter is found in the file by value
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


class Logits:
    """The torch module without its head: what cross-entropy trains."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        return self.net.body(x)

    def parameters(self):
        return self.net.parameters()

    def state_dict(self):
        return self.net.state_dict()


@WARNINGS
@pytest.mark.parametrize("exporter", ["script", "dynamo"])
@pytest.mark.parametrize("kind", ["relu", "zoo"])
def test_torch_mlp(kind, exporter, tmp_path, capfd):
    torch = pytest.importorskip("torch")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    net = torch_net(kind).eval()
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (torch.zeros(2, 6),), path, dynamo=exporter == "dynamo",
                      input_names=["x"])  # the default: a fixed batch of 2
    capfd.readouterr()
    mapping = mapping_by_value(net, path)
    g = lc.load_onnx(path, batch="N")
    assert {v.name for v in g.trainable()} == set(dict(net.named_parameters()))
    assert_cli_works(path, "multi", tmp_path, capfd)
    assert_trains_like_torch(path, Logits(net), mapping, "multi", "adamw", tmp_path)
