"""The layout map: where each trainable parameter comes from in the source model file.

Import may store a parameter differently from the file: a weight that ``MatMul`` multiplies
from the right is stored ``[C_in, C_out]`` and becomes ``[C_out, C_in]`` (``transpose``);
torch's ``onnx::MatMul_8`` becomes ``fc1.weight``; a ``[1, C_out]`` bias becomes ``[C_out]``
(``reshape``). :func:`~.onnx_import.load_onnx` records, for each trainable parameter ``P``,
``{"source": <the file's tensor>, "transform": "identity" | "transpose" | "reshape"}`` in the
graph's metadata ``lincompile.params``; a training graph keeps it for its trainable inputs.

scikit-learn's linear models (``ai.onnx.ml`` ``LinearRegressor``, ``LinearClassifier``) hold
their parameters in node attributes: ``{"source": <node>, "attribute": "coefficients" |
"intercepts", "transform": T}``, the node named by its name (by its first output where the
model has no name of its own for it), the attribute a flat list of float32. ``T`` is
``identity``, ``reshape`` (the list is ``P`` row by row), or ``pair`` (the list is ``[−P; P]``
row by row: skl2onnx's two-class form, trained as the one row ``P``).

:func:`write_trained` applies the inverse: trained values in the training graph's layout go
back into a copy of the source model, under the file's own names, shapes and dtypes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import LincompileError, ShapeError
from ..files import refuse_inputs, write_atomically
from ..ir import Graph
from ..training import STATE_SUFFIXES

TRANSFORMS = ("identity", "transpose", "reshape")
#: The transforms of a parameter held in a node attribute (a flat list of floats).
ATTRIBUTE_TRANSFORMS = ("identity", "reshape", "pair")


def layout_of(graph: Graph) -> dict[str, dict[str, str]]:
    """The layout map of a model or training graph (identity for every trainable parameter
    where the graph records none: a graph built in Python is saved in its own layout)."""
    if "lincompile.params" in graph.meta:
        return json.loads(graph.meta["lincompile.params"])
    return {p.value.name: {"source": p.value.name, "transform": "identity"}
            for p in graph.params.values() if p.trainable and not p.const}


def describe(spec: dict) -> str:
    """A layout-map entry for people: where in the file the parameter is, and how stored.

    >>> describe({"source": "onnx::MatMul_8", "transform": "transpose"})
    'onnx::MatMul_8, transposed'
    >>> describe({"source": "LinearClassifier", "attribute": "coefficients", "transform": "pair"})
    'LinearClassifier.coefficients, as [-P; P]'
    """
    src = spec["source"] + (f".{spec['attribute']}" if "attribute" in spec else "")
    t = spec["transform"]
    how = {"identity": "", "transpose": "transposed", "reshape": "reshaped",
           "pair": "as [-P; P]"}.get(t, t)
    return f"{src}, {how}" if how else src


def start_state(train: Graph) -> dict[str, np.ndarray]:
    """Every input of a training graph but the data (model inputs and ``target``), at its
    starting value: parameters, zeroed optimizer state, ``step`` 0 and the recorded ``lr``."""
    state = {k: np.asarray(v) for k, v in train.initial_state.items()}
    lr = next((v for v in train.inputs if v.name == "lr"), None)
    if lr is not None and "lincompile.lr" in train.meta:
        state["lr"] = np.array(float(train.meta["lincompile.lr"]), lr.dtype)
    return state


def _parameter_values(values: dict, layout: dict) -> dict[str, np.ndarray]:
    """``values`` (``P`` or ``P.next`` keys, optimizer state ignored) → ``{P: array}``."""
    out: dict[str, np.ndarray] = {}
    for k, v in values.items():
        p = k[:-len(".next")] if k.endswith(".next") and k[:-len(".next")] in layout else k
        if p in layout:
            if p in out:
                raise LincompileError(f"values hold both '{p}' and '{p}.next'; pass one")
            out[p] = np.asarray(v)
        elif not _is_state(k, layout):
            raise LincompileError(f"values: '{k}' is not a trainable parameter of the model "
                                  f"(trainable: {', '.join(layout)})")
    missing = [p for p in layout if p not in out]
    if missing:
        raise LincompileError(f"values: no value for trainable parameter(s) "
                              f"{', '.join(missing)}")
    return out


def _is_state(name: str, layout: dict) -> bool:
    base = name[:-len(".next")] if name.endswith(".next") else name
    base = base[:-len(".grad")] if base.endswith(".grad") else base
    if base in ("step", "lr", "loss") or base in layout:
        return True
    return any(base == f"{p}.{s}" for p in layout for s in STATE_SUFFIXES)


def _inverse(name: str, spec: dict, value: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``value`` (lincompile's layout) in the layout of the file's tensor ``like``."""
    t = spec["transform"]
    if t not in TRANSFORMS:
        raise LincompileError(f"parameter '{name}': unknown transform '{t}' in "
                              f"lincompile.params (known: {', '.join(TRANSFORMS)})")
    out = value.T if t == "transpose" else value.reshape(like.shape) if t == "reshape" and \
        value.size == like.size else value
    if out.shape != like.shape:
        raise ShapeError(f"parameter '{name}' {list(value.shape)} does not fit its source "
                         f"'{spec['source']}' {list(like.shape)} ({t})")
    return np.ascontiguousarray(out, dtype=like.dtype)


def _inverse_attribute(name: str, spec: dict, value: np.ndarray,
                       like: np.ndarray) -> np.ndarray:
    """``value`` (lincompile's layout) as the flat float32 list of the attribute ``like``."""
    t = spec["transform"]
    if t not in ATTRIBUTE_TRANSFORMS:
        raise LincompileError(f"parameter '{name}': unknown transform '{t}' for attribute "
                              f"'{spec['attribute']}' in lincompile.params (known: "
                              f"{', '.join(ATTRIBUTE_TRANSFORMS)})")
    out = np.concatenate([-value, value]) if t == "pair" else value
    if out.size != like.size or (t == "identity" and value.ndim != 1):
        raise ShapeError(f"parameter '{name}' {list(value.shape)} does not fit attribute "
                         f"'{spec['attribute']}' of node '{spec['source']}' ({like.size} "
                         f"values; {t})")
    return np.ascontiguousarray(out, dtype=np.float32).reshape(-1)


def _attribute(model: onnx.ModelProto, name: str, spec: dict) -> onnx.AttributeProto:
    """The attribute ``spec`` names: of the one node called ``spec["source"]``, else of the
    node whose first output that is."""
    src, attr = spec["source"], spec["attribute"]
    nodes = [n for n in model.graph.node if n.name == src] or \
        [n for n in model.graph.node if n.output[:1] == [src]]
    where = f"parameter '{name}' (attribute '{attr}' of node '{src}')"
    if len(nodes) != 1:
        raise LincompileError(f"{where}: the model has {len(nodes)} nodes of that name; "
                              "cannot write it back")
    found = [a for a in nodes[0].attribute if a.name == attr]
    if not found:
        raise LincompileError(f"{where}: node '{src}' ({nodes[0].op_type}) has no such "
                              "attribute; cannot write it back")
    if found[0].type != onnx.AttributeProto.FLOATS:
        raise LincompileError(f"{where}: not a list of floats; only such attributes can be "
                              "written back")
    return found[0]


def write_trained(model_path: str | os.PathLike, values: dict[str, np.ndarray],
                  out_path: str | os.PathLike,
                  params: Graph | dict | str | None = None) -> Path:
    """Write ``values`` (trained parameters in the training graph's layout, as ``P`` or as
    the step's ``P.next`` outputs; optimizer state is ignored) into a copy of the model file.

    The copy keeps every initializer's name, shape and dtype and every node (a classifier
    head left out of training included): only the trained tensors change (and the trained
    attributes of scikit-learn's ``LinearRegressor``/``LinearClassifier`` nodes). ``params`` is the
    layout map (a training graph, its ``lincompile.params`` JSON, or the dict); by default
    the map of ``load_onnx(model_path)``. ``out_path`` must not be ``model_path``.
    """
    refuse_inputs([out_path], [model_path])
    if params is None:
        from .onnx_import import load_onnx

        params = load_onnx(model_path)
    layout = (layout_of(params) if isinstance(params, Graph) else
              json.loads(params) if isinstance(params, str) else dict(params))
    trained = _parameter_values(values, layout)
    model = onnx.load(os.fspath(model_path))
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    copies = {n.output[0]: n for n in model.graph.node   # Identity of a constant: its own
              if n.op_type == "Identity" and (n.input[0] in inits or n.input[0] in consts)}
    for name, spec in layout.items():
        src = spec["source"]
        if "attribute" in spec:
            a = _attribute(model, name, spec)
            flat = _inverse_attribute(name, spec, trained[name], np.array(a.floats, np.float32))
            del a.floats[:]
            a.floats.extend(flat.tolist())   # float32 values: stored exactly
        elif src in inits:
            t = inits[src]
            t.CopyFrom(numpy_helper.from_array(
                _inverse(name, spec, trained[name], numpy_helper.to_array(t)), src))
        elif src in consts:
            a = consts[src].attribute[0]
            if a.name != "value":
                raise LincompileError(f"parameter '{name}': Constant '{src}' holds its value "
                                      f"as '{a.name}'; only 'value' can be written back")
            a.t.CopyFrom(numpy_helper.from_array(
                _inverse(name, spec, trained[name], numpy_helper.to_array(a.t)), a.t.name))
        elif src in copies:   # a parameter of its own: an initializer of its own now
            n = copies.pop(src)
            of = n.input[0]
            like = numpy_helper.to_array(inits[of] if of in inits else consts[of].attribute[0].t)
            model.graph.initializer.append(numpy_helper.from_array(
                _inverse(name, spec, trained[name], like), src))
            model.graph.node.remove(n)
        else:
            raise LincompileError(f"parameter '{name}': its source '{src}' is not an "
                                  f"initializer or Constant of '{model_path}'")
    out = Path(out_path)
    onnx.checker.check_model(model)
    write_atomically(out.parent, lambda tmp: (onnx.save_model(model, tmp / out.name),
                                              [out.name])[1])
    return out
