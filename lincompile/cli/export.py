"""``lincompile export-training``: write a model's training step as a standard ONNX file and
its starting state beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..frontends.layout import describe
from .args import model_flags, optimizer_from, training_args
from .base import OK, UsageError, command, dims, load, refuse_overwrite, roles


def _export_args(p):
    p.add_argument("model", nargs="?", help="the model, an ONNX file (e.g. from "
                   "torch.onnx.export)")
    p.add_argument("-o", "--output", required=True, metavar="TRAIN.onnx",
                   help="where to write the training graph")
    p.add_argument("--state", metavar="PATH", help="where to write the starting state (default: "
                   "TRAIN.state.npz beside TRAIN.onnx)")
    training_args(p, required=True)
    p.add_argument("--portable", action="store_true",
                   help="write one flat graph of standard ops (no local functions, one opset "
                        "import) that every ONNX runtime runs: OpenVINO, tract, onnx.reference")
    p.add_argument("--split", action="store_true",
                   help="write two graphs instead of one, for data-parallel loops: "
                        "TRAIN.grad.onnx (loss and every P.grad) and TRAIN.update.onnx (P, "
                        "P.grad, state and lr -> P.next and state .next)")
    model_flags(p)


@command("export-training", _export_args,
         "write the training step of a model as a standard ONNX file",
         "lincompile export-training mlp.onnx -o mlp_train.onnx --loss cross-entropy "
         "--optimizer sgd --lr 0.1 --momentum 0.9")
def export_training(a) -> int:

    from .. import save_onnx, training_graph
    from ..files import save_npz
    from ..frontends.layout import start_state

    opt = optimizer_from(a)
    if a.split and opt is None:
        raise UsageError("--split needs an optimizer (the gradient graph alone is "
                         "--optimizer none)")
    if a.split and a.emit_grads:
        raise UsageError("--emit-grads does not apply with --split: the gradient graph always "
                         "outputs every P.grad")
    out = Path(a.output)
    stem = out.name[:-5] if out.name.endswith(".onnx") else out.name
    state_path = Path(a.state) if a.state else out.with_name(stem + ".state.npz")
    # --split: -o TRAIN.onnx names the pair TRAIN.grad.onnx and TRAIN.update.onnx
    outs = ([out.with_name(f"{stem}.{part}.onnx") for part in ("grad", "update")] if a.split
            else [out])
    refuse_overwrite([a.model], [*outs, *(o.with_name(o.name + ".data") for o in outs),
                                 state_path])
    model = load(a.model, a)
    made = training_graph(model, loss=a.loss, optimizer=opt, frozen=a.freeze,
                          emit_grads=a.emit_grads, split=a.split)
    graphs = list(made) if a.split else [made]
    for g, o in zip(graphs, outs):
        path = save_onnx(g, o, portable=a.portable)
        what = {"grad": "gradient graph", "update": "update graph"}.get(
            g.meta.get("lincompile.split"), "training step")
        print(f"wrote {path}: {what} of '{model.name}' ({a.loss}, "
              f"{'no optimizer' if opt is None else opt}"
              f"{', portable form' if a.portable else ''})")
        print("  inputs:  " + ", ".join(f"{v.name} {dims(v.shape)}" for v in g.inputs))
        print("  outputs: " + ", ".join(v.name for v in g.outputs))
    first, last = graphs[0], graphs[-1]   # the loss side; the side that holds every state
    frozen, state = roles(first)[1], roles(last)[2]
    if frozen:
        print("  frozen:  " + ", ".join(v.name for v in frozen))
    if "lincompile.logits" in first.meta:
        print(f"  logits:  {first.meta['lincompile.logits']}")
    moved = [f"{k} (from {describe(m)})" for k, m in
             json.loads(first.meta["lincompile.params"]).items()
             if m["transform"] != "identity" or m["source"] != k or "attribute" in m]
    if moved:
        print("  layout:  " + ", ".join(moved))
    feeds = start_state(last)
    save_npz(state_path, feeds)
    print(f"wrote {state_path}: the starting state, in this graph's layout (parameters"
          + (f", each P.sum at {opt.initial_accumulator_value:g}"
             if getattr(opt, "initial_accumulator_value", 0) else
             ", optimizer state at zero" if state else "")
          + (", step 0" if "step" in feeds else "")
          + (f", lr {float(feeds['lr']):g}" if "lr" in feeds else "") + ")")
    data = [v.name for v in first.inputs if v.name not in feeds]
    data = ", ".join(data[:-1]) + " and " + data[-1] if len(data) > 1 else data[0]
    if a.split:
        data += " for the gradient graph, its P.grad outputs for the update graph"
    print(f"start from dict(np.load('{state_path}')) plus {data}; feed each X.next back as X "
          "(docs/training-graphs.md)")
    return OK
