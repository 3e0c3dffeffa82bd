"""Fuzzing the ONNX importer on damaged models.

Property: lincompile either raises a :class:`lincompile.LincompileError` subclass or gives
the right answer (onnxruntime's, for an imported model it also runs), never another
exception, a crash or a hang (each example has a time bound). Profiles and the long random
search: tests/fuzz_helpers.py.

A failure prints the shrunk example; add it to the regression tests at the end of this file.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
from fuzz_helpers import Hang, fuzz, time_bound
from helpers import mlp
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_models import I64, model

import lincompile as lc
from lincompile.backends.onnx import to_onnx
from lincompile.backends.reference import ReferenceExecutable

#: run at most this many feed elements through an imported model (huge dims are refused
#: by lincompile or not run, never allocated)
MAX_ELEMS = 1 << 16


# ------------------------------------------------------------------ seed models
F64 = TensorProto.DOUBLE
RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _seed_models() -> dict[str, bytes]:
    """Valid models that together use every op and form the importer reads."""
    out = {}
    n = helper.make_node
    out["gemm"] = model(
        [n("Flatten", ["x"], ["f"]), n("Gemm", ["f", "W1", "b1"], ["h"], name="/fc1/Gemm",
                                       transB=1),
         n("Relu", ["h"], ["r"]), n("Gemm", ["r", "W2", "b2"], ["y"], alpha=0.5, beta=2.0)],
        [("x", ["N", 2, 3])], [("y", ["N", 4])],
        {"W1": _rand(5, 6), "b1": _rand(5), "W2": _rand(5, 4), "b2": _rand(1, 4)})
    out["matmul"] = model(
        [n("MatMul", ["x", "onnx::MatMul_7"], ["h"], name="/enc/MatMul"),
         n("Add", ["h", "b"], ["a"]), n("Tanh", ["a"], ["t"]),
         n("Transpose", ["V"], ["Vt"], perm=[1, 0]), n("MatMul", ["t", "Vt"], ["u"]),
         n("Constant", [], ["half"], value_float=0.5), n("Mul", ["u", "half"], ["m"]),
         n("Sigmoid", ["m"], ["s"]), n("Sub", ["s", "u"], ["d"]),
         n("Reshape", ["d", "shape"], ["rs"]), n("ReduceSum", ["rs", "axes"], ["rsum"],
                                                 keepdims=0),
         n("Identity", ["rsum"], ["y"])],
        [("x", ["N", 3])], [("y", ["N"])],
        {"onnx::MatMul_7": _rand(3, 4), "b": _rand(4), "V": _rand(2, 4),
         "shape": np.array([-1, 2], np.int64), "axes": np.array([1], np.int64)})
    out["loss"] = model(
        [n("Gemm", ["x", "W", "b"], ["logits"], transB=1),
         n("SoftmaxCrossEntropyLoss", ["logits", "t"], ["loss"], reduction="mean")],
        [("x", ["N", 3]), ("t", ["N"], I64)], [("loss", [])], {"W": _rand(4, 3), "b": _rand(4)})
    out["f64"] = model(
        [n("Gemm", ["x", "W"], ["h"], transB=1), n("Relu", ["h"], ["y"])],
        [("x", ["N", 3], F64)], [("y", ["N", 2], F64)],
        {"W": RNG.standard_normal((2, 3))}, opset=11)
    for name, opt in (("sgd", lc.SGD(0.1, momentum=0.9, weight_decay=0.01)),
                      ("adam", lc.Adam(0.01))):   # lincompile's own files, with functions
        out[f"train-{name}"] = to_onnx(lc.training_graph(mlp((4, 3, 2), seed=1),
                                                         optimizer=opt, emit_grads=True))
    out["model"] = to_onnx(mlp((4, 3, 2), act="sigmoid", seed=2))
    out["more"] = model(   # division, the newer activations, concat and slice
        [n("Div", ["x", "d"], ["xd"]), n("Gemm", ["xd", "W1", "b1"], ["h"], transB=1),
         n("Elu", ["h"], ["e"], alpha=0.5), n("Clip", ["e", "lo", "hi"], ["c"]),
         n("Softplus", ["c"], ["sp"]), n("Concat", ["c", "sp"], ["cat"], axis=1),
         n("Slice", ["cat", "s0", "s1", "ax"], ["sl"]), n("PRelu", ["sl", "slope"], ["p"]),
         n("HardSigmoid", ["p"], ["hs"]), n("MatMul", ["hs", "W2"], ["m"]),
         n("Add", ["m", "b2"], ["y"])],
        [("x", ["N", 3])], [("y", ["N", 2])],
        {"d": np.float32(255), "W1": _rand(5, 3), "b1": _rand(5),
         "lo": np.float32(-1), "hi": np.float32(6), "s0": np.array([0], np.int64),
         "s1": np.array([8], np.int64), "ax": np.array([-1], np.int64), "slope": _rand(8),
         "W2": _rand(8, 2), "b2": _rand(2)})
    ml = helper.make_model(helper.make_graph(   # scikit-learn's scaler and linear classifier
        [n("Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[0.5, -1.0, 2.0],
           scale=[2.0, 0.5, 1.0]),
         n("LinearClassifier", ["s"], ["label", "probabilities"], domain="ai.onnx.ml",
           coefficients=_rand(9).tolist(), intercepts=_rand(3).tolist(),
           classlabels_ints=[0, 1, 2], multi_class=1, post_transform="SOFTMAX")],
        "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)])
    ml.ir_version = 9
    onnx.checker.check_model(ml)
    out["sklearn"] = ml
    return {k: m.SerializeToString() for k, m in out.items()}


SEEDS = _seed_models()


# ------------------------------------------------------------------ mutations of a model
ATTR_NAMES = ["axis", "axes", "perm", "transA", "transB", "alpha", "beta", "keepdims",
              "allowzero", "noop_with_empty_axes", "reduction", "ignore_index", "momentum",
              "weight_decay", "beta1", "value", "value_float", "value_ints", "bogus"]
ATTR_VALUES = st.one_of(
    st.integers(-3, 3), st.sampled_from([2**40, -2**40, 2**62]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.lists(st.integers(-3, 3), min_size=1, max_size=4),
    st.sampled_from([b"mean", b"sum", b"", b"\xff"]),
    st.builds(lambda a: numpy_helper.from_array(np.asarray(a, np.float32)),
              st.lists(st.floats(-2, 2, width=32), max_size=3)))

DIMS = st.one_of(st.integers(0, 5), st.sampled_from([2**31, 2**40, 2**62]), st.just("N"),
                 st.just("M"))
ELEM_TYPES = st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64,
                              TensorProto.INT32, TensorProto.FLOAT16, TensorProto.BOOL,
                              TensorProto.STRING, TensorProto.UNDEFINED])
OP_TYPES = st.sampled_from(["Gemm", "MatMul", "Add", "Sub", "Mul", "Relu", "Sigmoid", "Tanh",
                            "Flatten", "Reshape", "ReduceSum", "Identity", "Transpose",
                            "Constant", "SoftmaxCrossEntropyLoss", "Softmax", "SGDMomentum",
                            "Adam", "Div", "Concat", "Slice", "Clip", "Elu", "Softplus",
                            "PRelu", "HardSigmoid", "Scaler", "LinearClassifier"])


def _names(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    out = [v.name for v in g.input] + [t.name for t in g.initializer]
    return out + [o for n in g.node for o in n.output if o]


def _set_dims(shape: onnx.TensorShapeProto, dims: list) -> None:
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


@st.composite
def mutated_model(draw) -> bytes:
    """A seed model with 1–4 structural mutations (or byte-level damage)."""
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    m = onnx.load_from_string(data)
    g = m.graph
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        kind = draw(st.sampled_from(MUTATIONS))
        kind(draw, m, g)
    data = m.SerializeToString()
    if draw(st.integers(0, 9)) == 0:   # byte-level damage of the serialized file
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            if not data:
                break
            i = draw(st.integers(0, len(data) - 1))
            how = draw(st.sampled_from(["flip", "cut", "dup", "zero"]))
            if how == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif how == "cut":
                del data[i:]
            elif how == "dup":
                data[i:i] = data[i:i + draw(st.integers(1, 16))]
            else:
                data[i] = 0
        data = bytes(data)
    return data


def _node(draw, g) -> onnx.NodeProto | None:
    return g.node[draw(st.integers(0, len(g.node) - 1))] if g.node else None


def m_remove_node(draw, m, g):
    if g.node:
        del g.node[draw(st.integers(0, len(g.node) - 1))]


def m_duplicate_node(draw, m, g):
    n = _node(draw, g)
    if n is not None:
        g.node.insert(draw(st.integers(0, len(g.node))), copy.deepcopy(n))


def m_shuffle_nodes(draw, m, g):
    nodes = list(g.node)
    order = draw(st.permutations(range(len(nodes))))
    new = [copy.deepcopy(nodes[i]) for i in order]
    del g.node[:]
    g.node.extend(new)


def m_op_type(draw, m, g):
    n = _node(draw, g)
    if n is not None:
        n.op_type = draw(OP_TYPES)


def m_domain(draw, m, g):
    n = _node(draw, g)
    if n is not None:
        n.domain = draw(st.sampled_from(["", "ai.onnx", "lincompile", "com.microsoft", "x"]))


def m_rewire(draw, m, g):
    """An input renamed to another tensor, a dangling name, or the node's own output."""
    n = _node(draw, g)
    if n is None or not n.input:
        return
    i = draw(st.integers(0, len(n.input) - 1))
    names = [*_names(m), "dangling", "", *list(n.output)]
    n.input[i] = draw(st.sampled_from(names))


def m_inputs_count(draw, m, g):
    n = _node(draw, g)
    if n is None:
        return
    if n.input and draw(st.booleans()):
        del n.input[draw(st.integers(0, len(n.input) - 1))]
    else:
        n.input.append(draw(st.sampled_from([*_names(m), "dangling", ""])))


def m_outputs(draw, m, g):
    n = _node(draw, g)
    if n is None:
        return
    how = draw(st.sampled_from(["drop", "extra", "rename", "clash"]))
    if how == "drop" and n.output:
        del n.output[-1]
    elif how == "extra":
        n.output.append(draw(st.sampled_from(["extra", ""])))
    elif how == "rename" and n.output:
        n.output[0] = "renamed"
    elif n.output:
        n.output[0] = draw(st.sampled_from(_names(m)))


def m_attribute(draw, m, g):
    n = _node(draw, g)
    if n is None:
        return
    how = draw(st.sampled_from(["remove", "add", "retype"]))
    if how == "remove" and n.attribute:
        del n.attribute[draw(st.integers(0, len(n.attribute) - 1))]
        return
    name = (n.attribute[draw(st.integers(0, len(n.attribute) - 1))].name
            if how == "retype" and n.attribute else draw(st.sampled_from(ATTR_NAMES)))
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            break
    n.attribute.append(helper.make_attribute(name, draw(ATTR_VALUES)))


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(t)
    except Exception:
        return None


def m_initializer(draw, m, g):
    if not g.initializer:
        return
    t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
    how = draw(st.sampled_from(["dims", "dtype", "truncate", "special", "empty", "rename",
                                "drop"]))
    if how == "dims":
        del t.dims[:]
        t.dims.extend(draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 2**31, 2**40, -1]),
                                    max_size=3)))
    elif how == "dtype":
        t.data_type = draw(ELEM_TYPES)
    elif how in ("truncate", "special", "empty") and _array(t) is None:
        return   # damaged by an earlier mutation already
    elif how == "truncate":
        a = _array(t)
        raw = a.tobytes()
        t.ClearField("float_data"), t.ClearField("int64_data"), t.ClearField("double_data")
        t.raw_data = raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif how == "special":
        a = _array(t).copy()
        if a.dtype.kind == "f" and a.size:
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
        elif a.size:
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([-1, 0, 2**40, -2**62, 7]))
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    elif how == "empty":
        t.CopyFrom(numpy_helper.from_array(np.zeros((0,), _array(t).dtype),
                                           t.name))
    elif how == "rename":
        t.name = draw(st.sampled_from([*_names(m), "renamed"]))
    else:
        g.initializer.remove(t)


def m_value_info(draw, m, g):
    """A graph input or output with another dtype, rank, dims or no shape."""
    vis = list(g.input) + list(g.output)
    if not vis:
        return
    vi = vis[draw(st.integers(0, len(vis) - 1))]
    tt = vi.type.tensor_type
    how = draw(st.sampled_from(["dtype", "dims", "noshape", "rename", "drop", "dup"]))
    if how == "dtype":
        tt.elem_type = draw(ELEM_TYPES)
    elif how == "dims":
        _set_dims(tt.shape, draw(st.lists(DIMS, max_size=4)))
    elif how == "noshape":
        tt.ClearField("shape")
    elif how == "rename":
        vi.name = draw(st.sampled_from([*_names(m), "renamed", ""]))
    elif how == "drop":
        (g.input if vi in g.input else g.output).remove(vi)
    else:
        (g.input if vi in g.input else g.output).append(copy.deepcopy(vi))


def m_model(draw, m, g):
    """Model-level fields: opsets, producer, lincompile metadata, functions."""
    how = draw(st.sampled_from(["opset", "producer", "role", "functions", "ir"]))
    if how == "opset":
        m.opset_import[0].version = draw(st.sampled_from([1, 6, 9, 11, 13, 18, 21, 99]))
    elif how == "producer":
        m.producer_name = draw(st.sampled_from(["lincompile", "pytorch", ""]))
    elif how == "role":
        helper.set_model_props(m, {"lincompile.role": draw(st.sampled_from(
            ["training", "model", ""])), "lincompile.lr": draw(st.sampled_from(
                ["0.1", "nan", "x"]))})
    elif how == "functions" and m.functions:
        del m.functions[draw(st.integers(0, len(m.functions) - 1))]
    elif how == "ir":
        m.ir_version = draw(st.sampled_from([3, 7, 9, 10, 99]))


def m_cycle(draw, m, g):
    """Two nodes each reading the other's output."""
    if len(g.node) >= 2:
        i, j = sorted(draw(st.lists(st.integers(0, len(g.node) - 1), min_size=2, max_size=2,
                                    unique=True)))
        a, b = g.node[i], g.node[j]
        if a.input and b.output:
            a.input[0] = b.output[0]


#: Weighted towards what passes onnx.checker (it rejects most damage to the node graph).
MUTATIONS = [m_remove_node, m_duplicate_node, m_shuffle_nodes, m_op_type, m_domain, m_rewire,
             m_inputs_count, m_outputs, m_model, m_cycle] + 3 * [
             m_attribute, m_initializer, m_value_info]


# ------------------------------------------------------------------ the importer
def _small_enough(g: lc.Graph, batch: int) -> bool:
    for v in g.inputs:
        size = 1
        for d in v.shape:
            size *= batch if isinstance(d, str) else d
        if size > MAX_ELEMS:
            return False
    return True


def _ort_outputs(data: bytes, feeds: dict) -> dict | None:
    """onnxruntime's outputs of the model itself, or None where it cannot run it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))
    except Exception:
        return None


def check_import(data: bytes) -> None:
    """Import ``data``; if accepted, the graph runs on the reference as onnxruntime does."""
    try:
        g = lc.load_onnx(data)
    except lc.LincompileError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(e)
        return
    assert isinstance(g, lc.Graph)
    g.verify()
    if not _small_enough(g, 3):
        return
    feeds = lc.random_feeds(g, batch=3, seed=0)
    try:
        got = ReferenceExecutable(g).run(feeds)
    except lc.LincompileError:
        return
    want = _ort_outputs(data, feeds)
    if want is None or any(a.size == 0 for a in feeds.values()):
        return   # (the mean of nothing: NaN in torch and lincompile, 0 in onnxruntime)
    if "lincompile.head" in g.meta:   # imported up to the logits, which the file never outputs
        return
    for k, w in want.items():
        assert k in got, (k, list(got))
        assert_close(got[k], np.asarray(w), k)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """``got`` is ``want`` (both float32, from two engines) within float32 rounding; outputs
    near or past float32's range, or with NaN, are not compared (there the order of
    operations decides)."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.dtype.kind != "f" or not np.isfinite(want).all() or np.abs(want).max(initial=0) > 1e30:
        if want.dtype.kind != "f":
            assert np.array_equal(got, want), what
        return
    diff = np.linalg.norm(got.astype(np.float64) - want)
    assert diff <= 1e-4 * np.linalg.norm(want) + 1e-6, (what, got, want)

def test_seed_models_import_and_match_onnxruntime():
    for name, data in SEEDS.items():
        g = lc.load_onnx(data)
        feeds = lc.random_feeds(g, batch=3, seed=0)
        assert _ort_outputs(data, feeds) is not None, name
        check_import(data)


@fuzz(1000)
@given(data=mutated_model())
def test_importer_on_mutated_models(data):
    with time_bound(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_import(data)



# ------------------------------------------------------------------ what the fuzzer found
def test_initializer_with_more_data_than_its_dims_is_a_model_load_error():
    m = onnx.load_from_string(SEEDS["gemm"])   # (onnx.checker finds too little data)
    w = next(t for t in m.graph.initializer if t.name == "W1")
    w.dims[:] = [2]
    with pytest.raises(lc.ModelLoadError, match="initializer 'W1': cannot read its data"):
        lc.load_onnx(m)


@pytest.mark.parametrize("attrs", [{}, {"value_float": 1.0, "value_int": 1}])
def test_constant_without_exactly_one_value_is_a_model_load_error(attrs):
    node = helper.make_node("Constant", [], ["c"], name="k", **attrs)   # onnx.checker passes
    m = onnx.load_from_string(SEEDS["gemm"])
    m.graph.node.insert(0, node)
    m.graph.node[-1].input[2] = "c"
    with pytest.raises(lc.ModelLoadError, match=f"Constant node 'k' has {len(attrs)} attr"):
        lc.load_onnx(m)


@pytest.mark.parametrize("elem", [TensorProto.UNDEFINED, 99])
def test_input_of_an_odd_onnx_type_is_a_shape_error(elem):
    m = onnx.load_from_string(SEEDS["gemm"])
    m.graph.input[0].type.tensor_type.elem_type = elem
    with pytest.raises(lc.ShapeError, match="input 'x' has dtype"):
        lc.load_onnx(m.SerializeToString())


def test_transpose_with_a_perm_that_is_no_order_of_the_axes_is_a_shape_error():
    m = onnx.load_from_string(SEEDS["matmul"])
    t = next(n for n in m.graph.node if n.op_type == "Transpose")
    t.attribute[0].ints[:] = [0, 0]
    with pytest.raises(lc.ShapeError, match=r"perm \[0, 0\] is not an order of the 2 axes"):
        lc.load_onnx(m)


def test_gemm_of_a_scalar_is_a_shape_error_not_a_weight():
    m = model([helper.make_node("Gemm", ["x", "b", "c"], ["y"], transB=1)],
              [("x", [2, 3])], [("y", [2, 3])], {"b": np.float32(2), "c": np.ones(3, np.float32)})
    with pytest.raises(lc.ShapeError, match="ONNX node 'Gemm'"):
        lc.load_onnx(m)

def test_cross_entropy_reduction_that_is_not_text_is_unsupported():
    m = onnx.load_from_string(SEEDS["loss"])
    m.graph.node[1].attribute[0].s = b"\xff"
    with pytest.raises(lc.UnsupportedOpError, match="reduction '\ufffd'"):
        lc.load_onnx(m)


@pytest.mark.parametrize("which", ["shape", "axes"])
def test_reshape_shape_and_reducesum_axes_must_be_integers(which):
    m = onnx.load_from_string(SEEDS["matmul"])
    t = next(t for t in m.graph.initializer if t.name == which)
    t.CopyFrom(numpy_helper.from_array(np.array([np.nan] * len(t.dims), np.float32), which))
    with pytest.raises(lc.ShapeError, match=f"'{which}' holds float32, expected int64"):
        lc.load_onnx(m)


def test_the_time_bound_fires():
    import time

    with pytest.raises(Hang), time_bound(0.05):
        time.sleep(2)


def test_adam_attributes_that_disagree_are_a_model_load_error():
    """Found by the long fuzz run: β1 edited to 0 beside 1 − β1 = 0.1. onnxruntime runs the
    function with both as written (a different update than either β1 means), so the import
    refuses the pair instead of dropping one; a consistent edit of both still imports."""
    m = onnx.load_from_string(SEEDS["train-adam"])
    node = next(n for n in m.graph.node if n.op_type == "Adam")
    beta1 = next(a for a in node.attribute if a.name == "beta1")
    beta1.f = 0.0
    with pytest.raises(lc.ModelLoadError, match=r"one_minus_beta1 = 0\.1 does not follow"):
        lc.load_onnx(m)
    next(a for a in node.attribute if a.name == "one_minus_beta1").f = 1.0
    g = lc.load_onnx(m)
    assert any(n.attrs.get("beta1") == 0.0 for n in g.nodes if n.op == "adam")


def test_adam_without_its_beta_attributes_takes_the_defaults_and_checks_them():
    """Found by the long fuzz run: β2 left out (the default 0.999 applies) beside the file's
    1 − β2 of 0.001: consistent, imports; beside another 1 − β2: a one-line error."""
    m = onnx.load_from_string(SEEDS["train-adam"])
    node = next(n for n in m.graph.node if n.op_type == "Adam")
    keep = [a for a in node.attribute if a.name != "beta2"]
    del node.attribute[:]
    node.attribute.extend(keep)
    assert any(n.op == "adam" for n in lc.load_onnx(m).nodes)
    next(a for a in node.attribute if a.name == "one_minus_beta2").f = 0.5
    with pytest.raises(lc.ModelLoadError, match="one_minus_beta2 = 0.5 does not follow"):
        lc.load_onnx(m)
