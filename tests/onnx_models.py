"""Small ONNX models built with onnx.helper, and onnxruntime as the oracle for them."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import TARGETS
from onnx import TensorProto, helper, numpy_helper

import lincompile as lc

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes, inputs, outputs, inits=(), opset=18, name="m") -> onnx.ModelProto:
    """A checked model; ``inputs``/``outputs`` are ``(name, shape[, elem_type])``, ``inits``
    is ``{name: array}``."""
    vi = lambda n, s, t=F32: helper.make_tensor_value_info(n, t, s)
    tensors = [numpy_helper.from_array(np.asarray(a), k) for k, a in dict(inits).items()]
    g = helper.make_graph(nodes, name, [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                          tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def ort_run(m: onnx.ModelProto, feeds: dict) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_matches_ort(m: onnx.ModelProto, feeds: dict, graph: lc.Graph | None = None,
                       rtol: float = 1e-5, atol: float = 1e-6) -> lc.Graph:
    """``load_onnx(m)`` on every target gives onnxruntime's outputs of ``m`` itself."""
    graph = graph or lc.load_onnx(m)
    want = ort_run(m, feeds)
    for t in TARGETS:
        got = lc.compile(graph, t).run(feeds)
        assert set(got) == set(want), t
        for k, w in want.items():
            assert got[k].shape == w.shape and got[k].dtype == w.dtype, (t, k)
            np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=f"{t}: {k}")
    return graph


def ops(graph: lc.Graph) -> list[str]:
    return [n.op for n in graph.nodes]
