"""lc.load_onnx: torch exports, Gemm/MatMul forms, constants, round trips, clear errors.

Oracles: torch (outputs, gradients, optimizer steps), onnxruntime on the original model,
and, for lincompile's own files, the graph that was saved.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import TARGETS
from helpers import mlp
from onnx import TensorProto, helper
from onnx_models import I64, assert_matches_ort, model, ops

import lincompile as lc

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------- torch exports
def torch_mlp(kind: str):
    """Flatten, Linear with and without bias, ReLU/Sigmoid/Tanh; in a Sequential or named."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    if kind == "sequential":
        return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5, bias=False),
                             nn.Sigmoid(), nn.Linear(5, 3), nn.Tanh()), (2, 2, 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 8, bias=False)
            self.body = nn.Sequential(nn.Tanh(), nn.Linear(8, 4), nn.ReLU())
            self.fc2 = nn.Linear(4, 3, bias=False)

        def forward(self, x):
            return self.fc2(self.body(self.fc1(x)))

    return Net(), (2, 6)


#: torch's own deprecation notices (TorchScript exporter, pytree) are not ours to fix.
TORCH_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                            "ignore::FutureWarning")
EXPORTS = {  # name: torch.onnx.export options
    "script": dict(dynamo=False),
    "script-unfolded": dict(dynamo=False, do_constant_folding=False),
    "script-dynamic": dict(dynamo=False, dynamic_axes={"x": {0: "batch"}}),
    "dynamo": dict(dynamo=True),
    "dynamo-dynamic": dict(dynamo=True, dynamic_axes={"x": {0: "N"}}),
}


def export(module, shape, how: str, path) -> str:
    """``torch.onnx.export`` to a file, as users do."""
    torch = pytest.importorskip("torch")
    if how.startswith("dynamo"):
        pytest.importorskip("onnxscript")
    kw = dict(EXPORTS[how])
    if "dynamic_axes" in kw and kw.get("dynamo"):
        kw = {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("N")},)}
    path = str(path / f"{how}.onnx")
    torch.onnx.export(module.eval(), (torch.zeros(shape),), path, input_names=["x"],
                      output_names=["y"], **kw)
    return path


@TORCH_WARNINGS
@pytest.mark.parametrize("kind", ["sequential", "named"])
@pytest.mark.parametrize("how", list(EXPORTS))
def test_torch_export_imports_as_linear_layers_with_torch_names(kind, how, tmp_path):
    torch = pytest.importorskip("torch")
    module, shape = torch_mlp(kind)
    g = lc.load_onnx(export(module, shape, how, tmp_path))
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    assert set(g.params) == set(state)  # 0.weight, fc1.weight: not onnx::MatMul_8
    for k, v in state.items():  # torch's layout [C_out, C_in], trainable
        assert g.params[k].data.shape == v.shape and np.array_equal(g.params[k].data, v), k
        assert g.params[k].trainable and not g.params[k].const
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    assert ops(g).count("linear") == n_linear and "matmul" not in ops(g)
    dynamic = how.endswith("dynamic")
    assert isinstance(g.inputs[0].shape[0], str) == dynamic
    x = rand(5 if dynamic else shape[0], *shape[1:])
    want = module(torch.from_numpy(x)).detach().numpy()
    for t in TARGETS:
        np.testing.assert_allclose(lc.compile(g, t).run({"x": x})["y"], want,
                                   rtol=1e-5, atol=1e-6, err_msg=t)


@TORCH_WARNINGS
@pytest.mark.parametrize("how", ["script", "dynamo-dynamic"])
def test_imported_torch_model_trains_like_torch(how, tmp_path):
    """One SGD step (momentum, weight decay) of the imported model = torch's, on every target,
    and the exported training graph keeps torch's names and layouts."""
    torch = pytest.importorskip("torch")
    module, shape = torch_mlp("named")
    g = lc.load_onnx(export(module, shape, how, tmp_path))
    opt = lc.SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    train = lc.training_graph(g, loss="cross-entropy", optimizer=opt, emit_grads=True)
    x, y = rand(*shape), np.array([0, 2], np.int64)

    torch_opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
    torch_opt.step()
    feeds = {"x": x, "target": y, "lr": np.float32(0.1), **train.initial_state}
    for t in TARGETS:
        out = lc.compile(train, t).run(feeds)
        np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-5, err_msg=t)
        for k, p in module.named_parameters():
            np.testing.assert_allclose(out[f"{k}.grad"], grads[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out[f"{k}.next"], p.detach().numpy(), rtol=1e-5, atol=1e-6)
    lc.save_onnx(train, tmp_path / "train.onnx")
    saved = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in onnx.load(tmp_path / "train.onnx").graph.input}
    assert saved["fc1.weight"] == [8, 6] and saved["fc2.weight"] == [3, 4]


# ---------------------------------------------------------------------------- Gemm and MatMul
W, B = rand(4, 3), rand(4)  # a weight [C_out=4, C_in=3] and its bias

GEMMS = {  # name: (Gemm attributes, C or None, B stored as [C_in, C_out], expected IR ops)
    "linear": ({"transB": 1}, None, False, ["linear"]),
    "linear-bias": ({"transB": 1}, B, False, ["linear"]),
    "bias-1xC": ({"transB": 1}, B[None], False, ["linear"]),
    "weight-in-out": ({}, B, True, ["linear"]),
    "scalar-c": ({"transB": 1}, np.float32(0.5), False, ["linear", "add"]),
    "matrix-c": ({"transB": 1}, rand(2, 4), False, ["linear", "add"]),
    "alpha": ({"transB": 1, "alpha": 0.5}, B, False, ["linear", "mul", "add"]),
    "beta": ({"transB": 1, "beta": 2.0}, B, False, ["linear", "mul", "add"]),
    "beta-0": ({"transB": 1, "beta": 0.0}, B, False, ["linear"]),
    "all": ({"transA": 1, "transB": 1, "alpha": 0.25, "beta": 0.35}, B[None], False,
            ["matmul", "mul", "mul", "add"]),
}


@pytest.mark.parametrize("case", list(GEMMS))
def test_gemm_is_linear_where_it_fits_and_exact_everywhere(case):
    attrs, c, stored_t, want_ops = GEMMS[case]
    inits = {"W": W.T.copy() if stored_t else W}
    ins = ["a", "W"]
    if c is not None:
        inits["C"], ins = c, [*ins, "C"]
    ta = attrs.get("transA", 0)
    a_shape = [3, 2] if ta else [2, 3]
    m = model([helper.make_node("Gemm", ins, ["y"], name="/fc/Gemm", **attrs)],
              [("a", a_shape)], [("y", [2, 4])], inits)
    g = assert_matches_ort(m, {"a": rand(*a_shape)})
    assert ops(g) == want_ops
    if want_ops[0] == "linear":
        assert g.params["W"].trainable and g.params["W"].data.shape == (4, 3)
        assert np.array_equal(g.params["W"].data, W)  # [C_out, C_in], transposed back
    if want_ops == ["linear"] and c is not None and attrs.get("beta", 1) != 0:
        assert g.params["C"].trainable and g.params["C"].data.shape == (4,)
    if "add" in want_ops:
        assert g.params["C"].const and not g.params["C"].trainable


def test_gemm_on_graph_inputs_is_linear_or_matmul_by_layout():
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
             helper.make_node("Gemm", ["y", "v"], ["z"])]
    m = model(nodes, [("x", [2, 3]), ("w", [4, 3]), ("b", [4]), ("v", [4, 5])],
              [("z", [2, 5])])
    g = assert_matches_ort(m, {"x": rand(2, 3), "w": rand(4, 3), "b": rand(4), "v": rand(4, 5)})
    assert ops(g) == ["linear", "matmul"] and not g.params


@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("bias", [B, B[None]], ids=["C", "1xC"])
def test_matmul_add_becomes_one_linear(bias, bias_first):
    add_in = ["b", "h"] if bias_first else ["h", "b"]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="/enc/MatMul"),
             helper.make_node("Add", add_in, ["y"])]
    m = model(nodes, [("x", ["N", 3])], [("y", ["N", 4])], {"W": W.T.copy(), "b": bias})
    g = assert_matches_ort(m, {"x": rand(5, 3)})
    assert ops(g) == ["linear"] and g.params["b"].data.shape == (4,)
    assert np.array_equal(g.params["W"].data, W)  # a named weight keeps its name


def test_matmul_add_stays_apart_where_fusing_would_change_the_graph():
    """The product is also an output; the weight is shared by two products."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"]),
             helper.make_node("MatMul", ["x", "W"], ["k"])]
    m = model(nodes, [("x", [2, 3])], [("h", [2, 4]), ("y", [2, 4]), ("k", [2, 4])],
              {"W": W.T.copy(), "b": B})
    g = assert_matches_ort(m, {"x": rand(2, 3)})
    assert ops(g) == ["matmul", "add", "matmul"]


@pytest.mark.parametrize("node_name, want", [("/encoder/encoder.0/MatMul", "encoder.0.weight"),
                                             ("", "onnx::MatMul_3")])
def test_pretransposed_torch_weight_gets_its_scope_name(node_name, want):
    m = model([helper.make_node("MatMul", ["x", "onnx::MatMul_3"], ["y"], name=node_name)],
              [("x", [2, 3])], [("y", [2, 4])], {"onnx::MatMul_3": W.T.copy()})
    g = assert_matches_ort(m, {"x": rand(2, 3)})
    assert list(g.params) == [want] and np.array_equal(g.params[want].data, W)


# ---------------------------------------------------------------------------- constants
def const_node(name, array):
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(array))


def test_constant_nodes_are_weights_shapes_and_constants():
    nodes = [const_node("w", W), const_node("b", B), const_node("shape", np.array([-1, 4])),
             const_node("half", np.float32(0.5)),
             helper.make_node("Flatten", ["x"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["h"], transB=1),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Mul", ["r", "half"], ["m"]),
             helper.make_node("Sub", ["m", "r"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["s2"]),
             helper.make_node("Tanh", ["r"], ["t"]),
             helper.make_node("Add", ["s2", "t"], ["a"]),
             helper.make_node("Relu", ["a"], ["relu"]),
             helper.make_node("Identity", ["relu"], ["y"])]
    m = model(nodes, [("x", ["N", 1, 3])], [("y", ["N", 4])])
    g = assert_matches_ort(m, {"x": rand(5, 1, 3)})
    assert {k for k, p in g.params.items() if p.trainable} == {"w", "b"}
    assert g.params["half"].const and "shape" not in g.params  # an attribute now
    assert g.nodes[2].attrs["shape"] == [-1, 4]


def test_external_data_loads_relative_to_the_model_file(tmp_path, monkeypatch):
    m = model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
              [("x", ["N", 3])], [("y", ["N", 4])], {"W": W, "b": B})
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.onnx"
    onnx.save_model(onnx.ModelProto.FromString(m.SerializeToString()), path,  # a copy: save
                    save_as_external_data=True, location="m.weights",
                    size_threshold=0)
    assert (tmp_path / "models" / "m.weights").exists()
    monkeypatch.chdir(tmp_path)  # not the model's directory
    g = assert_matches_ort(m, {"x": rand(3, 3)}, graph=lc.load_onnx(path))
    assert np.array_equal(g.params["W"].data, W)
    with pytest.raises(lc.ModelLoadError, match="external"):
        lc.load_onnx(path.read_bytes())


def test_softmax_cross_entropy_mean_imports_and_other_reductions_do_not():
    def sce(**attrs):
        nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1),
                 helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "t"], ["loss"], **attrs)]
        return model(nodes, [("x", ["N", 3]), ("t", ["N"], I64)], [("loss", [])],
                     {"W": W, "b": B})

    g = assert_matches_ort(sce(reduction="mean"), {"x": rand(6, 3), "t": np.arange(6) % 4})
    assert ops(g) == ["linear", "softmax_cross_entropy"]
    with pytest.raises(lc.UnsupportedOpError, match="reduction 'sum'"):
        lc.load_onnx(sce(reduction="sum"))


def test_arbitrary_tensor_names_are_kept():
    x, w, y = "x input/0:ü", 'w"eight\\', "out put;*/"
    m = model([helper.make_node("Gemm", [x, w], ["h h"], transB=1, name="n o d e"),
               helper.make_node("Relu", ["h h"], [y])], [(x, [2, 3])], [(y, [2, 4])], {w: W})
    g = assert_matches_ort(m, {x: rand(2, 3)})
    assert [v.name for v in g.inputs] == [x] and list(g.params) == [w]
    assert [v.name for v in g.outputs] == [y]


# ---------------------------------------------------------------------------- round trips
OPTIMIZERS = {"none": None, "sgd": lc.SGD(0.1), "momentum": lc.SGD(0.05, 0.9, 1e-4),
              "adam": lc.Adam(1e-3, weight_decay=0.1), "adamw": lc.AdamW(2e-3, (0.8, 0.99))}


def assert_round_trip(graph: lc.Graph, path) -> lc.Graph:
    """Saved and loaded back: same names, kinds of parameters, ops, metadata and outputs."""
    lc.save_onnx(graph, path)
    back = lc.load_onnx(path)
    for attr in ("inputs", "outputs"):
        assert [(v.name, v.dtype, v.shape) for v in getattr(back, attr)] == \
               [(v.name, v.dtype, v.shape) for v in getattr(graph, attr)]
    kinds = lambda g: {k: (p.trainable, p.const) for k, p in g.params.items()}
    assert kinds(back) == kinds(graph) and back.meta == graph.meta
    assert [(n.op, n.attrs) for n in back.nodes] == [(n.op, n.attrs) for n in graph.nodes]
    feeds = lc.random_feeds(graph, batch=3, seed=1)
    want = lc.compile(graph, "reference").run(feeds)
    got = lc.compile(back, "reference").run(feeds)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-6, atol=1e-7, err_msg=k)
    return back


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_training_graphs_round_trip(loss, opt, tmp_path):
    t = lc.training_graph(mlp((5, 4, 3), act="sigmoid"), loss=loss, optimizer=OPTIMIZERS[opt])
    assert_round_trip(t, tmp_path / "t.onnx")


@pytest.mark.parametrize("opt", ["momentum", "adamw"])
def test_training_graphs_with_frozen_params_and_grads_round_trip(opt, tmp_path):
    t = lc.training_graph(mlp((5, 4, 4, 3), act="tanh"), optimizer=OPTIMIZERS[opt],
                          frozen=["fc1.weight", "fc2.bias"], emit_grads=True)
    back = assert_round_trip(t, tmp_path / "t.onnx")
    assert {k for k, p in back.params.items() if not p.const} == {"fc1.weight", "fc2.bias"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_graphs_of_every_forward_op_round_trip(dtype, tmp_path):
    g = lc.Graph("zoo", seed=2)
    x = g.input("x", ["N", 2, 3], dtype)
    h = g.sigmoid(g.linear(g.flatten(x), 4, name="fc1"))
    h = g.tanh(g.linear(h, 4, bias=False, name="fc2"))
    s = g.reduce_sum(g.matmul(h, g.const(np.arange(16, dtype=dtype).reshape(4, 4), "P")), [1],
                     keepdims=True)
    h = g.add(g.mul(g.broadcast_to(s, h), g.const(np.array(0.5, dtype))), g.relu(h))
    g.output(g.apply("identity", [g.reshape(h, [-1, 4])]), "y")
    back = assert_round_trip(g.verify(), tmp_path / "zoo.onnx")
    assert back.params["fc1.weight"].trainable


def test_flat_export_without_its_fused_record_is_not_read_back_as_fused_ops():
    from lincompile.backends.onnx import to_onnx

    m = to_onnx(lc.training_graph(mlp(), optimizer=lc.Adam()), portable=True)
    keep = [p for p in m.metadata_props if p.key != "lincompile.fused"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    with pytest.raises(lc.UnsupportedOpError, match="opset 18"):
        lc.load_onnx(m)


# ---------------------------------------------------------------------------- errors
def test_unsupported_op_names_type_node_opset_and_supported_ops():
    m = model([helper.make_node("Sin", ["x"], ["y"], name="probs")],
              [("x", [2, 3])], [("y", [2, 3])], opset=17)
    with pytest.raises(lc.UnsupportedOpError) as e:
        lc.load_onnx(m)
    msg = str(e.value)
    for part in ("'Sin'", "'probs'", "opset 17", "Gemm", "MatMul",
                 "ai.onnx.ml: LinearClassifier", "ai.onnx.preview.training: Adagrad, Adam"):
        assert part in msg
    # one short line: the ONNX ops a model may contain, not lincompile's own functions
    from lincompile.frontends.onnx_ops import supported_text

    assert "\n" not in msg and "lincompile." not in msg
    assert len(msg) < 150 + len(supported_text())   # the list, and a short sentence


def test_transpose_of_data_is_unsupported():
    m = model([helper.make_node("Transpose", ["x"], ["y"], name="t")],
              [("x", [2, 3])], [("y", [3, 2])])
    with pytest.raises(lc.UnsupportedOpError, match="Transpose of a constant"):
        lc.load_onnx(m)


def good_bytes() -> bytes:
    m = model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 3])], [("y", [2, 3])])
    return m.SerializeToString()


@pytest.mark.parametrize("data", [b"\x08\x07:\xff\xff\xff", good_bytes()[: len(good_bytes()) // 2]],
                         ids=["corrupt", "truncated"])
def test_unreadable_model_is_one_line_model_load_error(data, tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    for src in (path, str(path), data):
        with pytest.raises(lc.ModelLoadError) as e:
            lc.load_onnx(src)
        assert "\n" not in str(e.value) and e.value.__cause__ is None


def test_missing_file_and_checker_failure_are_model_load_errors(tmp_path):
    with pytest.raises(lc.ModelLoadError, match="nope.onnx"):
        lc.load_onnx(tmp_path / "nope.onnx")
    bad = onnx.load_from_string(good_bytes())
    bad.graph.node[0].input[0] = "undefined"
    with pytest.raises(lc.ModelLoadError, match="onnx.checker") as e:
        lc.load_onnx(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("elem", [TensorProto.INT32, TensorProto.FLOAT16, TensorProto.UINT8])
def test_non_float_inputs_are_a_clear_error(elem):
    m = model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2], elem)], [("y", [2], elem)])
    with pytest.raises(lc.ShapeError, match="input 'x' has dtype"):
        lc.load_onnx(m)


def test_float16_constant_is_a_clear_error():
    m = model([helper.make_node("Add", ["x", "c"], ["y"])], [("x", [2])], [("y", [2])],
              {"c": np.ones(2, np.float16)})
    with pytest.raises(lc.ShapeError, match="'c' has dtype float16"):
        lc.load_onnx(m)
