"""``lincompile lower``: a model's ``ai.onnx.preview.training`` nodes rewritten into standard
ONNX ops, every other node left as it is, so a stock runtime (onnxruntime without its
training build) runs the file.

Each ``Adagrad``, ``Momentum`` and ``Adam`` node, and each ``Gradient`` node together with
the part of the graph between its ``xs``/``zs`` and its ``y``, is imported into lincompile
(one IR op per optimized tensor; ``Gradient`` through lincompile's autodiff) and written
back in the portable form: default-domain nodes whose tensors are named under the node
they replace. A ``Gradient`` node reuses the forward tensors the graph computes already
(and recomputes only what it is fed other values for). A model on a default opset older
than 18 is converted to opset 18 first (``onnx.version_converter``).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper, shape_inference, version_converter

from .backends.onnx import check, to_onnx
from .backends.onnx_builder import OPSET, unique_name
from .errors import LincompileError, ModelLoadError
from .frontends.onnx_import import load_onnx, read_model
from .ops.preview import DOMAIN


def lower_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its preview-training nodes in standard ops."""
    model = _on_opset_18(model)
    graph = model.graph
    types = _known_types(model)
    inits = {t.name: t for t in graph.initializer}
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | set(inits) | {
        v.name for v in graph.input}
    node_names = {n.name for n in graph.node}
    done: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain != DOMAIN:
            done.append(node)
            continue
        sub = _submodel(model, node, done, types, inits)
        try:
            ir = load_onnx(sub)
        except LincompileError as e:
            raise type(e)(f"cannot lower {_what(node)}: {e}") from None
        for v in ir.outputs:
            types[v.name] = helper.make_tensor_value_info(v.name, _ELEM[v.dtype], list(v.shape))
        flat = to_onnx(ir, portable=True).graph
        # a Gradient's forward part: the tensors the graph computes already are reused
        reuse = {o for n in sub.graph.node[:-1] for o in n.output}   # the node itself is last
        live = [n for n in flat.node if not set(n.output) <= reuse]
        del flat.node[:]
        flat.node.extend(live)
        _prune(flat)
        keep = {v.name for v in sub.graph.input} | {v.name for v in sub.graph.output} | reuse
        rename = {}
        for name in [t.name for t in flat.initializer] + [o for n in flat.node for o in n.output]:
            if name not in keep and name not in rename:
                rename[name] = unique_name(f"{node.name or node.op_type}/{name}", taken)
        for t in flat.initializer:
            if t.name in rename:
                t.name = rename[t.name]
                graph.initializer.append(t)
        for n in flat.node:
            n.input[:] = [rename.get(i, i) for i in n.input]
            n.output[:] = [rename.get(o, o) for o in n.output]
            n.name = unique_name(f"{node.name or node.op_type}/{n.name}", node_names)
            done.append(n)
    lowered = onnx.GraphProto()
    lowered.CopyFrom(graph)
    del lowered.node[:]
    lowered.node.extend(done)
    graph.CopyFrom(lowered)
    if not any(n.domain == DOMAIN for n in graph.node) and not any(
            n.domain == DOMAIN for f in model.functions for n in f.node):
        keep_ops = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep_ops)
    check(model)
    return model


def lower_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write ``src`` with its preview-training nodes lowered to ``dst`` (never ``src``)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise LincompileError(f"'{dst}' is the input file; lincompile never writes over its "
                              "input: choose another output path")
    model = lower_model(read_model(os.fspath(src)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")   # renamed into place: no torn file
    try:
        onnx.save_model(model, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# ------------------------------------------------------------------------- helpers
_ELEM = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE,
         "int64": onnx.TensorProto.INT64}


def _what(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name or '<unnamed>'}'"


def _on_opset_18(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model on default opset ≥ 18 (what the lowered nodes are written in)."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= OPSET:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if version is None:
            copy.opset_import.append(helper.make_opsetid("", OPSET))
        return copy
    try:
        return version_converter.convert_version(model, OPSET)
    except Exception as e:
        raise ModelLoadError(f"cannot convert the model from opset {version} to {OPSET}: "
                             f"{str(e).strip().splitlines()[0]}") from None


def _known_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The type of every tensor that ONNX's shape inference or the file itself gives."""
    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:   # a node it cannot infer: what the file declares
        inferred = model.graph
    types = {t.name: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in model.graph.initializer}
    for vi in [*inferred.value_info, *inferred.output, *inferred.input]:
        if vi.type.tensor_type.elem_type and vi.type.tensor_type.HasField("shape"):
            types[vi.name] = vi
    return types


def _submodel(model: onnx.ModelProto, node: onnx.NodeProto, before: list[onnx.NodeProto],
              types: dict, inits: dict) -> onnx.ModelProto:
    """The node alone as a model; for ``Gradient``, with the nodes between its ``xs``/``zs``
    and its ``y``. Tensors from outside are inputs (int64 constants stay initializers, as
    lincompile reads shapes and axes from constants)."""
    nodes = [node]
    if node.op_type == "Gradient":
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        stop = {s.decode() for s in [*at.get("xs", []), *at.get("zs", [])]}
        made = {o: n for n in before for o in n.output}
        y = at.get("y", b"").decode()
        if y not in made and any(y in n.output for n in model.graph.node):
            raise ModelLoadError(f"cannot lower {_what(node)}: its y '{y}' is computed after "
                                 "it; put the Gradient node after the nodes it differentiates")
        needed = [y]
        seen: set[int] = set()
        while needed:
            t = needed.pop()
            n = made.get(t)
            if t in stop or n is None or id(n) in seen:
                continue
            seen.add(id(n))
            needed.extend(i for i in n.input if i)
        nodes = [n for n in before if id(n) in seen] + [node]
        needed_outside = stop
    else:
        needed_outside = set()
    produced = {o for n in nodes for o in n.output}
    outside = [i for n in nodes for i in n.input if i and i not in produced]
    outside += [t for t in sorted(needed_outside) if t not in produced]
    consts, inputs = [], []
    for name in dict.fromkeys(outside):
        if name in inits and inits[name].data_type == onnx.TensorProto.INT64:
            consts.append(inits[name])
        elif name in types:
            inputs.append(types[name])
        else:
            raise ModelLoadError(f"cannot lower {_what(node)}: the type of its input '{name}' "
                                 "is unknown (declare it in the graph's value_info)")
    outputs = []
    for o, like in zip(node.output, _updated(node)):
        if o:   # each output has the type of the input it is the new value (gradient) of
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(types.get(like) or _type_of(inits, like, node))
            vi.name = o
            outputs.append(vi)
    graph = helper.make_graph(nodes, f"{node.name or node.op_type}", inputs, outputs, consts)
    return helper.make_model(graph, opset_imports=list(model.opset_import),
                             producer_name=model.producer_name, ir_version=model.ir_version)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes and initializers that no output needs (a Gradient's forward part that
    only the original graph uses)."""
    needed = {o.name for o in graph.output}
    live = []
    for n in reversed(graph.node):
        if any(o in needed for o in n.output):
            needed.update(n.input)
            live.append(n)
    del graph.node[:]
    graph.node.extend(reversed(live))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _updated(node: onnx.NodeProto) -> list[str]:
    """For each output of a preview node, the input it is the new value of (for
    ``Gradient``: the x it is the gradient with respect to)."""
    ins = list(node.input)
    if node.op_type == "Gradient":
        return ins
    per = {"Adagrad": 3, "Momentum": 3, "Adam": 4}.get(node.op_type, 3)   # X, G, states
    n = max((len(ins) - 2) // per, 1)
    groups = [ins[2 + j * n: 2 + (j + 1) * n] for j in range(per)]
    return groups[0] + [t for g in groups[2:] for t in g]


def _type_of(inits: dict, name: str, node: onnx.NodeProto) -> onnx.ValueInfoProto:
    if name in inits:
        t = inits[name]
        return helper.make_tensor_value_info(name, t.data_type, list(t.dims))
    raise ModelLoadError(f"cannot lower {_what(node)}: the type of its input '{name}' is "
                         "unknown (declare it in the graph's value_info)")
