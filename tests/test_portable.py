"""The two forms of an exported training graph in ONNX runtimes other than onnxruntime.

Every form (default: local functions; portable: one flat graph of standard ops) × both
losses × every optimizer runs in ``onnx.reference`` and matches torch autograd + torch.optim
over 3 steps; the portable form also runs in OpenVINO and tract (the ``runtimes`` extra:
``pip install lincompile[runtimes]``) and matches torch there too. The portable file reads
back into lincompile as the same graph.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from helpers import mlp, teacher_data, torch_mlp
from runtimes import available, session

import lincompile as lc
from lincompile.backends.onnx import to_onnx
from lincompile.backends.onnx_builder import FUSED_KEY, OPSET

torch = pytest.importorskip("torch")

OPTIMIZERS = {
    "sgd": (lc.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-momentum-wd": (lc.SGD(0.1, momentum=0.9, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "adam": (lc.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adamw": (lc.AdamW(0.01, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    "none": (None, None),
}
STATE = {"velocity": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}
LOSSES = ("mse", "cross-entropy")
RTOL, ATOL = 1e-5, 1e-6


def problem(loss: str, optimizer):
    """The model (8-6-3 MLP), its training graph and three batches of data."""
    act = "tanh" if loss == "mse" else "relu"
    m = mlp((8, 6, 3), act=act, seed=4)
    t = lc.training_graph(m, loss=loss, optimizer=optimizer)
    batches = []
    for seed in (5, 6, 7):
        x, y = teacher_data(16, 8, 3, seed=seed)
        batches.append((x, y if loss == "cross-entropy" else np.eye(3, dtype=np.float32)[y]))
    return m, t, batches, act


def torch_expected(m: lc.Graph, loss: str, make_opt, batches, act: str) -> list[dict]:
    """Per step, torch's loss and every ``.next`` (or ``.grad`` without an optimizer)."""
    model = torch_mlp(m, act)
    params = dict(zip(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], model.parameters()))
    opt = make_opt(list(params.values())) if make_opt else None
    crit = torch.nn.CrossEntropyLoss() if loss == "cross-entropy" else torch.nn.MSELoss()
    steps = []
    for x, y in batches:
        model.zero_grad()
        value = crit(model(torch.from_numpy(x)), torch.from_numpy(y))
        value.backward()
        want = {"loss": value.item()}
        if opt is None:
            want.update({f"{k}.grad": p.grad.numpy().copy() for k, p in params.items()})
        else:
            opt.step()
            for k, p in params.items():
                want[f"{k}.next"] = p.detach().numpy().copy()
                for ours, theirs in STATE.items():
                    if theirs in opt.state[p]:
                        want[f"{k}.{ours}.next"] = opt.state[p][theirs].numpy().copy()
        steps.append(want)
    return steps


def check_three_steps(run, t: lc.Graph, batches, expected, what: str) -> None:
    state = dict(t.initial_state)
    lr = np.array(float(t.meta.get("lincompile.lr", 0.1)), np.float32)
    for i, ((x, y), want) in enumerate(zip(batches, expected)):
        feeds = {"x": x, "target": y, **state}
        if "lr" in [v.name for v in t.inputs]:
            feeds["lr"] = lr
        out = run(feeds)
        for k, v in want.items():
            np.testing.assert_allclose(out[k], v, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{what}, step {i + 1}: {k}")
        if "step" in state:
            assert int(out["step.next"]) == i + 1
        if any(k.endswith(".next") for k in want):   # without an optimizer: same params
            state = {k: out[f"{k}.next"] for k in state}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("portable", [False, True], ids=["default", "portable"])
def test_onnx_reference_runs_every_form_and_matches_torch(tmp_path, portable, loss, optimizer):
    ours, make_opt = OPTIMIZERS[optimizer]
    m, t, batches, act = problem(loss, ours)
    path = lc.save_onnx(t, tmp_path / "train.onnx", portable=portable)
    expected = torch_expected(m, loss, make_opt, batches, act)
    check_three_steps(session("onnx.reference", path), t, batches, expected,
                      f"onnx.reference, {'portable' if portable else 'default'} form")


@pytest.mark.parametrize("runtime", ["openvino", "tract"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", LOSSES)
def test_portable_form_runs_in_other_runtimes_and_matches_torch(tmp_path, runtime, loss,
                                                                  optimizer):
    if not available(runtime):
        pytest.skip(f"{runtime} is not installed (pip install lincompile[runtimes])")
    ours, make_opt = OPTIMIZERS[optimizer]
    m, t, batches, act = problem(loss, ours)
    path = lc.save_onnx(t, tmp_path / "train.onnx", portable=True)
    expected = torch_expected(m, loss, make_opt, batches, act)
    check_three_steps(session(runtime, path), t, batches, expected, f"{runtime}, portable")


# ------------------------------------------------------------------------ the file itself
@pytest.mark.parametrize("loss", LOSSES)
def test_portable_file_is_flat_standard_ops_with_one_opset(loss):
    t = lc.training_graph(mlp((6, 5, 3)), loss=loss, optimizer=lc.Adam())
    model = to_onnx(t, portable=True)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert not model.functions
    ops = {n.op_type for n in model.graph.node}
    assert {n.domain for n in model.graph.node} == {""}
    assert "SoftmaxCrossEntropyLoss" not in ops
    if loss == "cross-entropy":
        assert {"LogSoftmax", "GatherElements", "ReduceMean"} <= ops
    # the loss is a scalar, as the contract says, in ONNX's own shape inference too
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    loss_vi = next(o for o in inferred.graph.output if o.name == "loss")
    assert len(loss_vi.type.tensor_type.shape.dim) == 0


def test_default_form_imports_only_the_domains_it_uses():
    model = to_onnx(mlp((6, 5, 3)))
    assert [o.domain for o in model.opset_import] == [""]
    t = to_onnx(lc.training_graph(mlp((6, 5, 3)), optimizer=lc.SGD(0.1)))
    assert sorted(o.domain for o in t.opset_import) == ["", "lincompile"]
    assert FUSED_KEY not in {p.key for p in t.metadata_props}


def test_one_hot_depth_is_a_scalar_in_every_form():
    t = lc.training_graph(mlp((6, 5, 3)), optimizer=None)
    for portable in (False, True):
        model = onnx.shape_inference.infer_shapes(to_onnx(t, portable=portable))
        nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
        onehot = [n for n in nodes if n.op_type == "OneHot"]
        assert onehot
        made = {o: n for n in nodes for o in n.output}
        for n in onehot:
            depth = made[n.input[1]]
            # Gather of a scalar index out of the shape: a 0-d tensor
            assert depth.op_type == "Gather"
            index = made[depth.input[1]]
            value = onnx.numpy_helper.to_array(index.attribute[0].t)
            assert value.shape == ()


@pytest.mark.parametrize("loss", LOSSES)
def test_portable_file_reads_back_as_the_same_graph(tmp_path, loss):
    t = lc.training_graph(mlp((6, 5, 3)), loss=loss, optimizer=lc.SGD(0.1, momentum=0.9))
    default = lc.load_onnx(lc.save_onnx(t, tmp_path / "d.onnx"))
    back = lc.load_onnx(lc.save_onnx(t, tmp_path / "p.onnx", portable=True))
    assert str(back) == str(default)
    assert FUSED_KEY not in back.meta and back.meta == default.meta
    feeds = lc.random_feeds(t, batch=4, seed=3)
    want = lc.compile(t, "reference").run(feeds)
    got = lc.compile(back, "reference").run(feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # written again, it is the same file
    assert to_onnx(back, portable=True).SerializeToString() == \
        to_onnx(t, portable=True).SerializeToString()


def test_an_edited_portable_file_is_refused_by_name():
    t = lc.training_graph(mlp((6, 5, 3)), optimizer=lc.SGD(0.1, weight_decay=0.01))
    model = to_onnx(t, portable=True)
    # change one attribute inside the first fused op (fc1.weight's SGD update: its decay)
    node = next(n for n in model.graph.node if n.name.startswith("fc1.weight.update")
                and n.op_type == "Constant")
    node.attribute[0].f = 0.5
    with pytest.raises(lc.UnsupportedOpError, match="was the file edited") as e:
        lc.load_onnx(model)
    assert "fc1.weight.update" in str(e.value) and "\n" not in str(e.value)


def test_inline_is_a_deprecated_name_for_portable(tmp_path):
    t = lc.training_graph(mlp((6, 5, 3)), optimizer=lc.Adam())
    with pytest.warns(DeprecationWarning, match="portable"):
        path = lc.save_onnx(t, tmp_path / "i.onnx", inline=True)
    portable = lc.save_onnx(t, tmp_path / "p.onnx", portable=True)
    assert path.read_bytes() == portable.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lc.save_onnx(t, tmp_path / "d.onnx")


def test_cli_writes_the_portable_form(tmp_path, capsys):
    from lincompile.cli import main

    src = lc.save_onnx(mlp((6, 5, 3)), tmp_path / "mlp.onnx")
    out = tmp_path / "train.onnx"
    assert main(["export-training", str(src), "-o", str(out), "--loss", "cross-entropy",
                 "--optimizer", "sgd", "--momentum", "0.9", "--portable"]) == 0
    assert "portable form" in capsys.readouterr().out
    model = onnx.load(out)
    assert [o.domain for o in model.opset_import] == [""] and not model.functions
    back = lc.load_onnx(out)
    assert {n.op for n in back.nodes} >= {"sgd", "softmax_cross_entropy"}
