"""Training graphs: model + loss + chain-rule gradients + optimizer update
(docs/training-graphs.md).

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
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from numbers import Real
from typing import NamedTuple

import numpy as np

from .arrays import aligned_full
from .autodiff import append_grads
from .errors import LincompileError, OptimizerError
from .ir import Graph, Node, Value
from .ops.base import fmt_shape

LOSSES = {"cross-entropy": "softmax_cross_entropy", "mse": "mse"}
#: Each optimizer's state per trainable parameter P (inputs "P.velocity", "P.m", …)
STATE_SUFFIXES = {"velocity": "SGD momentum", "m": "Adam first moment",
                  "v": "Adam second moment", "sum": "Adagrad sum of squares"}
#: What a training graph adds per trainable parameter P: "P.grad", "P.next", "P.m", …
PARAM_SUFFIXES = {"grad": "its gradient", "next": "its updated value",
                  **{s: f"its {what}" for s, what in STATE_SUFFIXES.items()},
                  **{f"{s}.next": f"its next {what}" for s, what in STATE_SUFFIXES.items()}}
#: The training graph's own inputs and outputs.
RESERVED = {"target": "the target input", "loss": "the loss output", "lr": "the learning rate",
            "step": "Adam's step count", "step.next": "the next step count"}



def _check(opt: object, name: str, lo: float, hi: float | None = None,
           hi_open: bool = False) -> None:
    """``opt.name`` is a finite real number in [lo, hi] (or [lo, hi) with ``hi_open``)."""
    v = getattr(opt, name)
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= lo \
        and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        where = f"[{lo:g}, {hi:g}{')' if hi_open else ']'}" if hi is not None else f"≥ {lo:g}"
        raise OptimizerError(f"{type(opt).__name__}: {name} must be a finite number {where}, "
                             f"got {v!r}")


@dataclass(frozen=True)
class SGD:
    """torch.optim.SGD: ``g = grad + wd·p; v = momentum·v + g; p −= lr·v``."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0

    op = "sgd"

    def __post_init__(self) -> None:   # torch.optim's checks, and finite (JSON metadata)
        _check(self, "lr", 0)
        _check(self, "momentum", 0, 1)
        _check(self, "weight_decay", 0)

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

    def __post_init__(self) -> None:   # torch.optim's checks, and finite (JSON metadata)
        _check(self, "lr", 0)
        _check(self, "eps", 0)
        _check(self, "weight_decay", 0)
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise OptimizerError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), "
                                 f"got {betas!r}")
        object.__setattr__(self, "betas", tuple(betas))
        for i in range(2):
            b = betas[i]
            if not (isinstance(b, Real) and not isinstance(b, bool) and 0 <= b < 1):
                raise OptimizerError(f"{type(self).__name__}: beta{i + 1} must be a finite "
                                     f"number in [0, 1), got {b!r}")

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


@dataclass(frozen=True)
class Adagrad:
    """torch.optim.Adagrad: ``r = lr / (1 + step·lr_decay); g = grad + wd·p; sum += g²;
    p −= r·g / (√sum + eps)``, ``sum`` starting at ``initial_accumulator_value`` (the same
    update as ONNX's ``ai.onnx.preview.training`` Adagrad)."""

    lr: float = 0.01
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    op = "adagrad"

    def __post_init__(self) -> None:   # torch.optim's checks, and finite (JSON metadata)
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            _check(self, name, 0)

    def state(self) -> tuple[str, ...]:
        return ("sum",)

    def attrs(self) -> dict:
        return {"lr_decay": self.lr_decay, "weight_decay": self.weight_decay, "eps": self.eps}


Optimizer = SGD | Adam | AdamW | Adagrad


class SplitTraining(NamedTuple):
    """A training step in two graphs (``training_graph(..., split=True)``): ``grad`` computes
    ``loss`` and every ``P.grad``; ``update`` applies the optimizer to them (``P``, ``P.grad``,
    state, ``lr`` → ``P.next``, state ``.next``). Run in sequence they are the fused step; in
    between, a data-parallel loop all-reduces the gradients."""

    grad: Graph
    update: Graph


def training_graph(model: Graph, loss: str = "cross-entropy", optimizer: Optimizer | None = None,
                   frozen: Sequence[str] = (), emit_grads: bool = False,
                   name: str | None = None, split: bool = False) -> Graph | SplitTraining:
    """The training step of ``model`` (one output), with the input and output names of
    docs/training-graphs.md.

    ``optimizer=None`` outputs ``loss`` and every ``P.grad``; otherwise ``P.next`` and the
    optimizer state ``S.next`` (plus ``P.grad`` when ``emit_grads``). ``split=True`` returns
    the same step as a :class:`SplitTraining` pair of a gradient graph and an update graph.
    """
    if split and optimizer is None:
        raise LincompileError("split=True needs an optimizer: the gradient graph alone is "
                              "optimizer=None")
    if split and emit_grads:
        raise LincompileError("emit_grads does not apply with split=True: the gradient graph "
                              "always outputs every P.grad")
    if loss not in LOSSES:
        raise LincompileError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
    if len(model.outputs) != 1:
        raise LincompileError(f"model '{model.name}' has {len(model.outputs)} outputs; a "
                              "training graph needs exactly one (the prediction)")
    base = name or f"{model.name}_train"
    g = model.clone(f"{base}_grad" if split else base)
    unknown = [f for f in frozen if f not in g.params or g.params[f].const]
    if unknown:
        raise LincompileError(f"cannot freeze {unknown}: not parameters of '{model.name}' "
                              f"(parameters: {', '.join(p for p in g.params)})")
    for f in frozen:
        g.params[f].trainable = False
    pred, model_inputs = g.outputs[0], list(g.inputs)
    reserved = dict(RESERVED)
    for p in g.trainable():
        reserved.update({f"{p.name}.{s}": f"{what} of '{p.name}'"
                         for s, what in PARAM_SUFFIXES.items()})
    clash = next((v for v in g.values if v in reserved), None)
    if clash:
        raise LincompileError(f"tensor '{clash}' of model '{model.name}' has a name the "
                              f"training graph reserves for {reserved[clash]}; rename it in "
                              "the model")
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

    if optimizer is None or split:
        g.inputs = [*model_inputs, target, *params]
        g.outputs += [grads[p.name] for p in params]
        g.meta["lincompile.optimizer"] = "none"
        if not split:
            return g.verify()
        u = Graph(f"{base}_update")
        u.meta = {k: v for k, v in g.meta.items()
                  if k in ("lincompile.loss", "lincompile.role", "lincompile.params")}
        u_params = [u.input(p.name, p.shape, p.dtype) for p in params]
        u_grads = {p.name: u.input(f"{p.name}.grad", p.shape, p.dtype) for p in params}
        u.initial_state = {p.name: g.initial_state[p.name] for p in params}
        _append_update(u, u_params, u_grads, [], optimizer, pred.dtype)
        for h, part in ((g, "grad"), (u, "update")):
            _optimizer_meta(h, optimizer)
            h.meta["lincompile.split"] = part
        return SplitTraining(g.verify(), u.verify())

    _append_update(g, params, grads, [*model_inputs, target], optimizer, pred.dtype)
    if emit_grads:
        g.outputs += [grads[p.name] for p in params]
    _optimizer_meta(g, optimizer)
    return g.verify()


def _append_update(g: Graph, params: list[Value], grads: dict[str, Value],
                   first: list[Value], optimizer: Optimizer, dtype: str) -> None:
    """Add ``optimizer``'s state inputs, ``step`` and ``lr``, the update of each parameter and
    the ``.next`` outputs to ``g``; order the inputs as the contract says: ``first``, then each
    parameter (with its ``P.grad`` where that is an input) and its state, ``step``, ``lr``."""
    state_in: dict[str, list[Value]] = {}
    fill = optimizer.initial_accumulator_value if isinstance(optimizer, Adagrad) else 0
    for p in params:
        state_in[p.name] = []
        for s in optimizer.state():
            v = g.input(f"{p.name}.{s}", p.shape, p.dtype)
            g.initial_state[v.name] = aligned_full(p.shape, fill, p.dtype)
            state_in[p.name].append(v)
    step = None
    if isinstance(optimizer, (Adam, Adagrad)):
        step = g.input("step", [], "int64")
        g.initial_state["step"] = np.zeros((), np.int64)
    lr = g.input("lr", [], dtype)
    for p in params:
        state = state_in[p.name]
        extra = [step] if step is not None else []
        outs = [f"{p.name}.next"] + [f"{s.name}.next" for s in state]
        new = g.apply(optimizer.op, [p, grads[p.name], *state, *extra, lr],
                      name=f"{p.name}.update", outputs=outs, **optimizer.attrs())
        g.outputs += list(new) if isinstance(new, tuple) else [new]
    if step is not None:
        g.outputs.append(g.add(step, g.const(np.array(1, np.int64), "one"), name="step.next"))
    inputs = {v.name for v in g.inputs}
    g.inputs = [*first, *(v for p in params for v in (
        p, *([grads[p.name]] if grads[p.name].name in inputs else []), *state_in[p.name])),
        *([step] if step is not None else []), lr]


def _optimizer_meta(g: Graph, optimizer: Optimizer) -> None:
    g.meta["lincompile.lr"] = repr(float(optimizer.lr))
    g.meta["lincompile.optimizer"] = json.dumps({"type": optimizer.op, **asdict(optimizer)},
                                                allow_nan=False)


def binary_probability(g: Graph) -> Node | None:
    """The node that makes ``g``'s output one column of probabilities ``σ(z)`` (torch's
    ``nn.Sigmoid`` or Keras's sigmoid activation ending a binary classifier), if it does:
    cross-entropy trains such a model as the binary cross-entropy of ``z``."""
    out = g.outputs[0] if len(g.outputs) == 1 else None
    n = g.producers().get(out.name) if out is not None and len(out.shape) == 2 \
        and out.shape[1] == 1 else None
    head = json.loads(g.meta.get("lincompile.head", "{}")).get("kind", "none")
    return n if n is not None and n.op == "sigmoid" and head == "none" else None


def binary_output(g: Graph) -> str | None:
    """What ``g``'s one output column is to cross-entropy over two classes: ``"logit"`` (z
    before a two-class sigmoid head left in the file), ``"probability"`` (σ(z), see
    :func:`binary_probability`), or None (not a binary classifier's column)."""
    out = g.outputs[0] if len(g.outputs) == 1 else None
    if out is None or out.shape[-1:] != (1,):
        return None
    if json.loads(g.meta.get("lincompile.head", "{}")).get("kind") == "sigmoid":
        return "logit"
    return "probability" if binary_probability(g) is not None else None


def _loss_input(g: Graph, pred: Value, loss: str, name: str) -> Value:
    """What the loss reads: the prediction, or for cross-entropy the logits (recorded as
    ``lincompile.logits``). A classifier head of one sigmoid column ``z`` (the probabilities
    ``[1 − σ(z), σ(z)]``) gets the two logits ``[0, z]``, whose softmax is exactly that; so
    does an output ``σ(z)`` of one column (whose node the loss then does not need)."""
    kind = json.loads(g.meta.get("lincompile.head", "{}")).get("kind", "none")
    sig = binary_probability(g) if loss == "cross-entropy" else None
    if sig is not None:
        g.nodes.remove(sig)
        pred, kind = sig.inputs[0], "sigmoid"
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
            "class (or one column of sigmoid probabilities); use --loss mse (loss='mse') for "
            "one output, or give the model two logits")
    return pred
