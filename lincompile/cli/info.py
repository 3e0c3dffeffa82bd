"""Commands that read a model file and print what is in it: ``lincompile explain`` (the
chain-rule derivation) and ``lincompile info`` (inputs, outputs, parameters, ops,
metadata)."""

from __future__ import annotations

import json
import math
from collections import Counter

from ..frontends.layout import describe
from .args import model_flags
from .base import OK, command, dims, load, roles


def _explain_args(p):
    p.add_argument("file", help="an ONNX model or training graph")
    p.add_argument("--format", choices=["text", "markdown", "latex"], default="text")
    model_flags(p)


@command("explain", _explain_args,
         "print each Linear's forward and chain-rule gradients with real names and shapes",
         "lincompile explain mlp.onnx --format markdown > derivation.md")
def explain(a) -> int:
    from ..explain import explain

    print(explain(load(a.file, a), a.format), end="")
    return OK


def _info_args(p):
    p.add_argument("file", help="an ONNX model or training graph")
    model_flags(p)


@command("info", _info_args,
         "list inputs, outputs, parameters, op counts and metadata of a model file",
         "lincompile info mlp_train.onnx")
def info(a) -> int:
    import onnx

    graph = load(a.file, a)
    proto = onnx.load(a.file, load_external_data=False)   # opset, producer, ONNX node types
    trainable, frozen, state = roles(graph)
    role = "training graph" if any(v.name == "loss" for v in graph.outputs) else "model"
    part = graph.meta.get("lincompile.split")
    if part in ("grad", "update"):
        role = f"{'gradient' if part == 'grad' else 'update'} graph of a split training step"
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default="?")
    print(f"{a.file}: graph '{graph.name}', {role}, opset {opset}, producer "
          f"{proto.producer_name or '?'} {proto.producer_version}".rstrip())
    w = max(len(v.name) for v in [*graph.inputs, *graph.outputs, *trainable, *frozen])
    sw = max(len(dims(v.shape)) for v in [*trainable, *frozen, graph.inputs[0]])
    row = lambda v, extra="": f"  {v.name:<{w}}  {v.dtype:<7} {dims(v.shape):<{sw}}{extra}"
    print(f"inputs ({len(graph.inputs)}):")
    print("\n".join(row(v).rstrip() for v in graph.inputs))
    print(f"outputs ({len(graph.outputs)}):")
    print("\n".join(row(v).rstrip() for v in graph.outputs))
    size = lambda v: math.prod(v.shape)
    n_train, n_frozen = sum(map(size, trainable)), sum(map(size, frozen))
    print(f"parameters: {len(trainable)} trainable ({n_train:,} values), {len(frozen)} frozen "
          f"({n_frozen:,} values)")
    for v in trainable:
        print(row(v, f" {size(v):>9,}  trainable{_source(graph, v.name)}"))
    for v in frozen:
        print(row(v, f" {size(v):>9,}  frozen"))
    if state:
        print(f"optimizer state ({len(state)}): " + ", ".join(v.name for v in state))
    _print_head(graph)
    ops = Counter(n.op for n in graph.nodes)
    onnx_ops = Counter(n.op_type for n in proto.graph.node)
    print("ops: " + ", ".join(f"{k} ×{c}" for k, c in sorted(ops.items())))
    print("onnx nodes: " + ", ".join(f"{k} ×{c}" for k, c in sorted(onnx_ops.items())))
    if graph.meta:   # the file's metadata_props
        print("metadata:")
        for k, v in sorted(graph.meta.items()):
            print(f"  {k} = {v}")
    return OK


def _print_head(graph) -> None:
    """Which tensor is trained as the logits, and the classifier head left out after it."""
    head = json.loads(graph.meta.get("lincompile.head", "{}"))
    logits = graph.meta.get("lincompile.logits") or head.get("logits")
    if logits:
        print(f"logits: {logits}" + (" (trained by cross-entropy)"
                                     if "lincompile.logits" in graph.meta else ""))
    if head:
        what = (f"after {logits}" if head["kind"] == "none" else
                f"classifier head ({head['kind']})")
        print(f"{what}, left out (a trained copy keeps it): {', '.join(head['nodes'])}"
              + (f" -> {', '.join(head['outputs'])}" if head["outputs"] else ""))


def _source(graph, name: str) -> str:
    """Where a trainable parameter comes from in the model file, where not the same name."""
    m = json.loads(graph.meta.get("lincompile.params", "{}")).get(name)
    if not m or (m["source"] == name and m["transform"] == "identity" and "attribute" not in m):
        return ""
    return f"  (file: {describe(m)})"
