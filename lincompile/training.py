"""Training graphs: model + loss + chain-rule gradients + optimizer update (DESIGN §4).

>>> import lincompile as lc
>>> m = lc.Graph("mlp"); x = m.input("x", ["N", 4])
>>> _ = m.output(m.linear(x, 3, name="fc"))
>>> t = lc.training_graph(m, loss="cross-entropy", optimizer=lc.SGD(0.1, momentum=0.9))
>>> [v.name for v in t.inputs]
['x', 'target', 'fc.weight', 'fc.weight.velocity', 'fc.bias', 'fc.bias.velocity', 'lr']
>>> [v.name for v in t.outputs]
['loss', 'fc.weight.next', 'fc.weight.velocity.next', 'fc.bias.next', 'fc.bias.velocity.next']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .autodiff import append_grads
from .errors import LincompileError
from .ir import Graph, Value
from .ops.base import fmt_shape

LOSSES = {"cross-entropy": "softmax_cross_entropy", "mse": "mse"}


@dataclass(frozen=True)
class SGD:
    """torch.optim.SGD: ``g = grad + wd·p; v = momentum·v + g; p −= lr·v``."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0

    op = "sgd"

    def state(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def attrs(self) -> dict:
        return {"momentum": self.momentum, "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class Adam:
    """torch.optim.Adam (L2 weight decay added to the gradient)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    op = "adam"

    def state(self) -> tuple[str, ...]:
        return ("m", "v")

    def attrs(self) -> dict:
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps,
                "weight_decay": self.weight_decay}


@dataclass(frozen=True)
class AdamW(Adam):
    """torch.optim.AdamW (decoupled weight decay, default 0.01)."""

    weight_decay: float = 0.01
    op = "adamw"


Optimizer = SGD | Adam | AdamW


def training_graph(model: Graph, loss: str = "cross-entropy", optimizer: Optimizer | None = None,
                   frozen: Sequence[str] = (), emit_grads: bool = False,
                   name: str | None = None) -> Graph:
    """The training step of ``model`` (one output), with DESIGN §4's input/output names.

    ``optimizer=None`` outputs ``loss`` and every ``P.grad``; otherwise ``P.next`` and the
    optimizer state ``S.next`` (plus ``P.grad`` when ``emit_grads``).
    """
    if loss not in LOSSES:
        raise LincompileError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
    if len(model.outputs) != 1:
        raise LincompileError(f"model '{model.name}' has {len(model.outputs)} outputs; a "
                              "training graph needs exactly one (the prediction)")
    g = model.clone(name or f"{model.name}_train")
    unknown = [f for f in frozen if f not in g.params or g.params[f].const]
    if unknown:
        raise LincompileError(f"cannot freeze {unknown}: not parameters of '{model.name}' "
                              f"(parameters: {', '.join(p for p in g.params)})")
    for f in frozen:
        g.params[f].trainable = False
    pred, model_inputs = g.outputs[0], list(g.inputs)
    if "target" in g.values or "loss" in g.values or "lr" in g.values:
        raise LincompileError("the names 'target', 'loss' and 'lr' are reserved for the "
                              "training graph; rename those tensors of the model")
    pred = _loss_input(g, pred, loss, model.name)
    target = (g.input("target", [pred.shape[0]], "int64") if loss == "cross-entropy"
              else g.input("target", pred.shape, pred.dtype))
    loss_v = g.apply(LOSSES[loss], [pred, target], name="loss")
    g.outputs = [loss_v]

    params = g.trainable()
    if not params:
        raise LincompileError(f"model '{model.name}' has no trainable parameter")
    for p in params:  # a trainable parameter becomes an input, its value the initial state
        g.initial_state[p.name] = g.params.pop(p.name).data
    grads = append_grads(g, loss_v, params)
    g.meta.update({"lincompile.loss": loss, "lincompile.role": "training"})
    layout = json.loads(model.meta.get("lincompile.params", "{}"))
    g.meta["lincompile.params"] = json.dumps({
        p.name: layout.get(p.name, {"source": p.name, "transform": "identity"}) for p in params})

    if optimizer is None:
        g.inputs = [*model_inputs, target, *params]
        g.outputs += [grads[p.name] for p in params]
        g.meta["lincompile.optimizer"] = "none"
        return g.verify()

    state_in: dict[str, list[Value]] = {}
    for p in params:
        state_in[p.name] = []
        for s in optimizer.state():
            v = g.input(f"{p.name}.{s}", p.shape, p.dtype)
            g.initial_state[v.name] = np.zeros(p.shape, p.dtype)
            state_in[p.name].append(v)
    step = None
    if isinstance(optimizer, Adam):
        step = g.input("step", [], "int64")
        g.initial_state["step"] = np.zeros((), np.int64)
    lr = g.input("lr", [], pred.dtype)
    for p in params:
        state = state_in[p.name]
        extra = [step] if step is not None else []
        outs = [f"{p.name}.next"] + [f"{s.name}.next" for s in state]
        new = g.apply(optimizer.op, [p, grads[p.name], *state, *extra, lr],
                      name=f"{p.name}.update", outputs=outs, **optimizer.attrs())
        g.outputs += list(new) if isinstance(new, tuple) else [new]
    if step is not None:
        g.outputs.append(g.add(step, g.const(np.array(1, np.int64), "one"), name="step.next"))
    if emit_grads:
        g.outputs += [grads[p.name] for p in params]
    # the contract's order: model inputs, target, each parameter then its state, step, lr
    g.inputs = [*model_inputs, target, *(v for p in params for v in (p, *state_in[p.name])),
                *([step] if step is not None else []), lr]
    g.meta["lincompile.lr"] = repr(float(optimizer.lr))
    g.meta["lincompile.optimizer"] = json.dumps({"type": optimizer.op, **asdict(optimizer)})
    return g.verify()


def _loss_input(g: Graph, pred: Value, loss: str, name: str) -> Value:
    """What the loss reads: the prediction, or for cross-entropy the logits (recorded as
    ``lincompile.logits``). A classifier head of one sigmoid column ``z`` (the probabilities
    ``[1 − σ(z), σ(z)]``) gets the two logits ``[0, z]``, whose softmax is exactly that."""
    kind = json.loads(g.meta.get("lincompile.head", "{}")).get("kind", "none")
    if loss == "mse":  # (kind "none": a tensor chosen by name)
        if kind != "none":
            raise LincompileError(
                f"model '{name}' ends in a {kind} classifier head, left out after its "
                f"logits '{pred.name}': train it with cross-entropy, or choose the output to "
                "fit with mse by name (logits=NAME, --logits NAME)")
        return pred
    g.meta["lincompile.logits"] = pred.name
    if kind == "sigmoid" and pred.shape[-1:] == (1,):
        columns = g.const(np.array([[0, 1]], pred.dtype), "binary_logits.columns")
        return g.matmul(pred, columns, name=g.fresh("binary_logits"))
    if pred.shape[-1:] == (1,):
        raise LincompileError(
            f"'{pred.name}' {fmt_shape(pred.shape)} is one logit: cross-entropy needs one per "
            "class; use --loss mse (loss='mse') for one output, or give the model two logits")
    return pred
