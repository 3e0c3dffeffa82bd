"""One ONNX file in several ONNX runtimes, each on one thread: ``session(runtime, path)``
returns ``run(feeds) -> {output name: array}``. Shared by tests/test_portable.py and
benchmarks/bench_runtimes.py."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

Run = Callable[[dict], dict]
#: runtime -> the Python package it needs (the ``runtimes`` extra installs the last two)
PACKAGES = {"onnxruntime": "onnxruntime", "onnx.reference": "onnx", "openvino": "openvino",
            "tract": "tract"}


def _onnxruntime(path: str) -> Run:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


def _reference(path: str) -> Run:
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(path)
    ev = ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    return lambda feeds: dict(zip(names, ev.run(None, feeds)))


def _openvino(path: str) -> Run:
    import openvino as ov

    core = ov.Core()
    # f32 on every CPU (bf16 hardware would otherwise compute in bf16), one thread
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32",
        "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    # a tensor may carry several names (an Identity folded away): find each output's port
    outs = [(name, o) for o in compiled.outputs for name in o.get_names()]

    def run(feeds: dict) -> dict:
        res = request.infer({k: np.asarray(v) for k, v in feeds.items()})
        return {name: np.array(res[o]) for name, o in outs}
    return run


def _tract(path: str) -> Run:
    import onnx
    import tract

    graph = onnx.load(path, load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    in_names = [v.name for v in graph.input if v.name not in inits]
    out_names = [v.name for v in graph.output]
    runnable = tract.onnx().load(path).into_model().into_runnable()

    def run(feeds: dict) -> dict:
        outs = runnable.run([np.asarray(feeds[k]) for k in in_names])
        return {k: o.to_numpy() for k, o in zip(out_names, outs)}
    return run


SESSIONS = {"onnxruntime": _onnxruntime, "onnx.reference": _reference,
            "openvino": _openvino, "tract": _tract}


def available(runtime: str) -> bool:
    try:
        importlib.import_module(PACKAGES[runtime])
    except ImportError:
        return False
    return True


def session(runtime: str, path: str) -> Run:
    """``run(feeds)`` of the ONNX file ``path`` in ``runtime`` (one of :data:`SESSIONS`)."""
    return SESSIONS[runtime](str(path))
