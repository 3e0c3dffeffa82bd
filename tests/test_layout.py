"""The layout map, the start state and write_trained: trained values go back into the source
file in the file's own layout, and a plain onnxruntime loop starts from the state file.

Oracles: torch's own training steps (on the weights read back from the written file),
onnxruntime on the written model, and the source file itself (everything else unchanged).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnx_models import model

import lincompile as lc
from lincompile.frontends.layout import start_state

DOCS = Path(__file__).resolve().parent.parent / "docs" / "training-graphs.md"
TORCH_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                            "ignore::FutureWarning")
RNG = np.random.default_rng(3)


def inits(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def square_net(torch):
    """A square bias-free layer: following 'same names' advice would train from Wᵀ."""
    torch.manual_seed(0)
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 6, bias=False)
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    return Net()


@TORCH_WARNINGS
def test_square_torch_layer_trained_and_written_back_equals_torch(tmp_path):
    torch = pytest.importorskip("torch")
    net = square_net(torch)
    src = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(4, 6),), src, dynamo=False, input_names=["x"],
                      do_constant_folding=True)
    stored = [k for k, v in inits(src).items() if k.startswith("onnx::MatMul")]
    assert len(stored) == 1 and np.array_equal(inits(src)[stored[0]],
                                               net.fc1.weight.detach().numpy().T)

    g = lc.load_onnx(src, batch="N")
    train = lc.training_graph(g, loss="cross-entropy", optimizer=lc.SGD(0.5, momentum=0.9))
    layout = json.loads(train.meta["lincompile.params"])
    assert layout["fc1.weight"] == {"source": stored[0], "transform": "transpose"}
    assert layout["fc2.bias"] == {"source": "fc2.bias", "transform": "identity"}
    batches = [(RNG.standard_normal((n, 6)).astype(np.float32), RNG.integers(0, 3, n))
               for n in (4, 4, 3, 4, 2)]
    step, state = lc.compile(train, "onnx"), start_state(train)
    for x, y in batches:
        out = step.run({"x": x, "target": y, **state})
        state = {k: out[f"{k}.next"] if f"{k}.next" in out else v for k, v in state.items()}
    dst = lc.write_trained(src, state, tmp_path / "trained.onnx")

    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    back = square_net(torch)
    w = inits(dst)
    back.load_state_dict({"fc1.weight": torch.from_numpy(w[stored[0]].T.copy()),
                          "fc2.weight": torch.from_numpy(w["fc2.weight"].copy()),
                          "fc2.bias": torch.from_numpy(w["fc2.bias"].copy())})
    for k, p in net.state_dict().items():
        np.testing.assert_allclose(back.state_dict()[k].numpy(), p.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=k)
    # the copy is the source with three tensors replaced: names, shapes, dtypes, nodes kept
    a, b = onnx.load(src), onnx.load(dst)
    assert [n.SerializeToString() for n in a.graph.node] == \
           [n.SerializeToString() for n in b.graph.node]
    assert [(t.name, list(t.dims), t.data_type) for t in a.graph.initializer] == \
           [(t.name, list(t.dims), t.data_type) for t in b.graph.initializer]
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    sess = ort.InferenceSession(dst, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0],
                               net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def sk_like(binary: bool = False) -> onnx.ModelProto:
    """skl2onnx's MLPClassifier layout without its leading Cast: MatMul weights [C_in, C_out],
    biases [1, C_out], a Softmax (or Sigmoid + Concat) head with ArgMax and a label output."""
    k = 1 if binary else 3
    w = {"coefficient": RNG.standard_normal((5, 4)).astype(np.float32),
         "intercepts": RNG.standard_normal((1, 4)).astype(np.float32),
         "coefficient1": RNG.standard_normal((4, k)).astype(np.float32),
         "intercepts1": RNG.standard_normal((1, k)).astype(np.float32),
         "classes": np.arange(2 if binary else 3, dtype=np.int64) + 10}
    nodes = [helper.make_node("MatMul", ["X", "coefficient"], ["mul_result"], name="MatMul"),
             helper.make_node("Add", ["mul_result", "intercepts"], ["add_result"], name="Add"),
             helper.make_node("Relu", ["add_result"], ["h"], name="Relu"),
             helper.make_node("MatMul", ["h", "coefficient1"], ["mul_result1"], name="MatMul1"),
             helper.make_node("Add", ["mul_result1", "intercepts1"], ["add_result1"], name="A1")]
    if binary:
        w["unity"] = np.array(1, np.float32)
        nodes += [helper.make_node("Sigmoid", ["add_result1"], ["p1"], name="Relu1"),
                  helper.make_node("Sub", ["unity", "p1"], ["p0"], name="Sub"),
                  helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    else:
        nodes += [helper.make_node("Softmax", ["add_result1"], ["probabilities"], name="Relu1")]
    nodes += [helper.make_node("ArgMax", ["probabilities"], ["am"], axis=1),
              helper.make_node("ArrayFeatureExtractor", ["classes", "am"], ["label"],
                               domain="ai.onnx.ml")]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "sk", [vi("X", onnx.TensorProto.FLOAT, [None, 5])],
                          [vi("label", onnx.TensorProto.INT64, [None]),
                           vi("probabilities", onnx.TensorProto.FLOAT, [None, 2 if binary else 3])],
                          [numpy_helper.from_array(a, k) for k, a in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("ai.onnx.ml", 1)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("binary", [False, True])
def test_head_is_left_out_of_training_and_kept_by_write_trained(binary, tmp_path):
    src = tmp_path / "sk.onnx"
    onnx.save(sk_like(binary), src)
    g = lc.load_onnx(src)
    assert [v.name for v in g.outputs] == ["add_result1"] and len(g.nodes) == 3
    layout = json.loads(g.meta["lincompile.params"])
    assert layout == {"coefficient": {"source": "coefficient", "transform": "transpose"},
                      "intercepts": {"source": "intercepts", "transform": "reshape"},
                      "coefficient1": {"source": "coefficient1", "transform": "transpose"},
                      "intercepts1": {"source": "intercepts1", "transform": "reshape"}}
    head = json.loads(g.meta["lincompile.head"])
    assert head["kind"] == ("sigmoid" if binary else "softmax") and head["classes"][0] == 10
    train = lc.training_graph(g, loss="cross-entropy", optimizer=lc.Adam(0.01))
    assert train.meta["lincompile.logits"] == "add_result1"
    out = lc.compile(train, "reference").run({"X": RNG.standard_normal((6, 5)).astype(
        np.float32), "target": np.array([0, 1, 1, 0, 1, 0]), **start_state(train)})
    trained = {k: v + 1 for k, v in train.initial_state.items() if k in g.params}
    dst = lc.write_trained(src, {**{f"{k}.next": v for k, v in trained.items()},
                                 **{k: v for k, v in out.items() if k.endswith((".m.next",
                                                                                ".v.next"))}},
                           tmp_path / "sk_trained.onnx", params=train)
    before, after = inits(src), inits(dst)
    for k, v in before.items():  # every tensor: the same shape and dtype; the trained + 1
        assert after[k].shape == v.shape and after[k].dtype == v.dtype, k
        np.testing.assert_array_equal(after[k], v + 1 if k in trained else v, err_msg=k)
    a, b = onnx.load(src), onnx.load(dst)
    assert a.graph.node == b.graph.node and a.graph.output == b.graph.output


def test_write_trained_refuses_its_source_and_bad_values(tmp_path):
    src = tmp_path / "sk.onnx"
    onnx.save(sk_like(), src)
    g = lc.load_onnx(src)
    good = {k: p.data for k, p in g.params.items()}
    with pytest.raises(lc.LincompileError, match="it is the input file"):
        lc.write_trained(src, good, src)
    with pytest.raises(lc.LincompileError, match="it is the input file"):
        lc.write_trained(src, good, tmp_path / "." / "sk.onnx")
    with pytest.raises(lc.LincompileError, match="no value for trainable parameter.*intercepts1"):
        lc.write_trained(src, {k: v for k, v in good.items() if k != "intercepts1"},
                         tmp_path / "o.onnx")
    with pytest.raises(lc.LincompileError, match="'fc9.weight' is not a trainable parameter"):
        lc.write_trained(src, {**good, "fc9.weight": good["coefficient"]}, tmp_path / "o.onnx")
    with pytest.raises(lc.LincompileError, match="both 'coefficient' and 'coefficient.next'"):
        lc.write_trained(src, {**good, "coefficient.next": good["coefficient"]},
                         tmp_path / "o.onnx")
    with pytest.raises(lc.ShapeError, match="'coefficient' \\[5, 4\\] does not fit"):
        lc.write_trained(src, {**good, "coefficient": good["coefficient"].T},
                         tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_weight_from_a_constant_node_is_written_back_there(tmp_path):
    w = RNG.standard_normal((3, 2)).astype(np.float32)  # [C_in, C_out] for MatMul
    m = model([helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
               helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", ["N", 3])],
              [("y", ["N", 2])])
    onnx.save(m, tmp_path / "c.onnx")
    g = lc.load_onnx(tmp_path / "c.onnx")
    assert json.loads(g.meta["lincompile.params"]) == {"W": {"source": "W",
                                                             "transform": "transpose"}}
    dst = lc.write_trained(tmp_path / "c.onnx", {"W": 2 * g.params["W"].data},
                           tmp_path / "c2.onnx")
    const = onnx.load(dst).graph.node[0]
    np.testing.assert_array_equal(numpy_helper.to_array(const.attribute[0].t), 2 * w)


def test_layout_map_survives_save_and_load_of_the_training_file(tmp_path):
    onnx.save(sk_like(), tmp_path / "sk.onnx")
    train = lc.training_graph(lc.load_onnx(tmp_path / "sk.onnx"), optimizer=lc.SGD(0.1),
                              frozen=["coefficient"])
    lc.save_onnx(train, tmp_path / "t.onnx")
    back = lc.load_onnx(tmp_path / "t.onnx")
    assert back.meta["lincompile.params"] == train.meta["lincompile.params"]
    assert set(json.loads(back.meta["lincompile.params"])) == {"intercepts", "coefficient1",
                                                               "intercepts1"}
    with pytest.raises(lc.LincompileError, match="training graph"):
        lc.load_onnx(tmp_path / "t.onnx", logits="add_result1")


def test_python_built_graph_records_identity_layout():
    g = lc.Graph("m", seed=0)
    g.output(g.linear(g.input("x", ["N", 3]), 2, name="fc"))
    train = lc.training_graph(g, optimizer=lc.Adam())
    assert json.loads(train.meta["lincompile.params"]) == {
        "fc.weight": {"source": "fc.weight", "transform": "identity"},
        "fc.bias": {"source": "fc.bias", "transform": "identity"}}
    state = start_state(train)
    assert set(state) == {v.name for v in train.inputs} - {"x", "target"}
    assert state["step"] == 0 and state["lr"].dtype == np.float32 and state["lr"] == 1e-3


# ---------------------------------------------------------------------------- dynamic batch
@TORCH_WARNINGS
@pytest.mark.parametrize("dynamo", [False, True])
def test_fixed_batch_of_a_default_torch_export_becomes_symbolic(dynamo, tmp_path):
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(12, 5)

        def forward(self, x):  # view(batch, -1): the exporter bakes the batch of 4
            return torch.relu(self.fc(x.view(x.size(0), -1)))

    net = Net().eval()
    torch.onnx.export(net, (torch.zeros(4, 3, 4),), tmp_path / "n.onnx", dynamo=dynamo,
                      input_names=["x"])
    fixed = lc.load_onnx(tmp_path / "n.onnx")
    assert fixed.inputs[0].shape == (4, 3, 4)
    g = lc.load_onnx(tmp_path / "n.onnx", batch="N")
    assert g.inputs[0].shape == ("N", 3, 4) and g.outputs[0].shape == ("N", 5)
    x = RNG.standard_normal((7, 3, 4)).astype(np.float32)
    for t in ("reference", "onnx", "c"):
        np.testing.assert_allclose(lc.compile(g, t).run({"x": x})[g.outputs[0].name],
                                   net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=t)
    train = lc.training_graph(g, loss="mse", optimizer=lc.SGD(0.1))
    assert train.inputs[1].shape == ("N", 5)
    # a training file of the fixed model: --dynamic-batch frees x and target, not the state
    lc.save_onnx(lc.training_graph(fixed, loss="mse", optimizer=lc.Adam()), tmp_path / "t.onnx")
    back = lc.load_onnx(tmp_path / "t.onnx", batch="N")
    shapes = {v.name: v.shape for v in back.inputs}
    assert shapes["x"] == ("N", 3, 4) and shapes["target"] == ("N", 5)
    assert shapes["fc.weight"] == (5, 12) and shapes["step"] == () and shapes["lr"] == ()
    out = lc.compile(back, "onnx").run({"x": x, "target": np.zeros((7, 5), np.float32),
                                        **{k: v for k, v in lc.random_feeds(back, 2).items()
                                           if k not in ("x", "target")}})
    assert out["fc.weight.next"].shape == (5, 12)


def test_dynamic_batch_flag_on_every_command_that_reads_a_model(tmp_path):
    from lincompile.cli import COMMANDS, parser

    reads = {"info", "validate", "explain", "export-training", "compile", "train"}
    for name in reads:
        help_text = parser()._subparsers._group_actions[0].choices[name].format_help()
        assert "--dynamic-batch" in help_text and "--logits" in help_text, name
    assert reads <= set(COMMANDS)
    m = model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [("x", [2, 3])],
              [("y", [2, 4])], {"W": RNG.standard_normal((4, 3)).astype(np.float32)})
    onnx.save(m, tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-m", "lincompile", "info", tmp_path / "m.onnx",
                        "--dynamic-batch"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  x\s+float32 \[N, 3\]$", r.stdout, re.M), r.stdout


# ---------------------------------------------------------------------------- the docs loop
def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(), re.S)


def test_docs_onnxruntime_loop_runs_as_written(tmp_path):
    """The shell commands and the Python loop of docs/training-graphs.md's 'training loop'
    section, run in a fresh folder as a reader would."""
    text = DOCS.read_text()
    section = text[text.index("## The training loop"):]
    shell = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    loop = re.search(r"```python\n(.*?)```", section, re.S)[1]
    for line in shell.strip().splitlines():
        args = line.split("#")[0].split()
        assert args[0] == "lincompile", line
        r = subprocess.run([sys.executable, "-m", "lincompile", *args[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    check = ("\nimport json; print('STATE', json.dumps({k: v.tolist() for k, v in state.items() "
             "if v.ndim == 0}))")
    r = subprocess.run([sys.executable, "-c", loop + check], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    losses = [float(v) for v in re.findall(r"mean loss ([\d.]+)", r.stdout)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    scalars = json.loads(re.search(r"^STATE (.*)$", r.stdout, re.M)[1])
    train = onnx.load(next(tmp_path.glob("*_train.onnx")))
    meta = {p.key: p.value for p in train.metadata_props}
    assert scalars["lr"] == pytest.approx(float(meta["lincompile.lr"]))
    if "step" in scalars:  # Adam: every minibatch was one update
        assert scalars["step"] == len(losses) * (1797 // 32)
    trained = next(tmp_path.glob("*trained*.onnx"))
    from lincompile.datasets import load_digits

    x, y = load_digits()
    sess = ort.InferenceSession(trained, providers=["CPUExecutionProvider"])
    assert np.mean(np.argmax(sess.run(None, {"x": x})[0], axis=1) == y) > 0.9


@pytest.mark.parametrize("opt", [lc.SGD(0.1, momentum=0.9), lc.Adam(0.01), lc.Adagrad(0.1)],
                         ids=["momentum", "adam", "adagrad"])
def test_write_trained_takes_a_whole_step_output(opt, tmp_path):
    """Every optimizer's state outputs (``P.velocity``, ``P.m``/``P.v``, ``P.sum``, ``step``)
    may be passed along with ``P.next``: only the parameters are written."""
    g = lc.Graph("m", seed=0)
    g.output(g.linear(g.input("x", ["N", 4]), 3, name="fc"), name="y")
    src = lc.save_onnx(g, tmp_path / "m.onnx")
    t = lc.training_graph(lc.load_onnx(src), loss="mse", optimizer=opt)
    feeds = {**start_state(t), "x": np.ones((2, 4), np.float32),
             "target": np.zeros((2, 3), np.float32)}
    out = lc.compile(t, "reference").run(feeds)
    lc.write_trained(src, out, tmp_path / "trained.onnx", params=t)
    got = {i.name: numpy_helper.to_array(i)
           for i in onnx.load(tmp_path / "trained.onnx").graph.initializer}
    np.testing.assert_array_equal(got["fc.weight"], out["fc.weight.next"])
    np.testing.assert_array_equal(got["fc.bias"], out["fc.bias.next"])
