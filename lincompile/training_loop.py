"""``lc.train`` and ``lincompile train``: train a model file on your own data.

The loop is the one any user of a training graph writes (docs/training-graphs.md): feed a
shuffled minibatch, the learning rate and the current state, and feed every ``S.next`` back as
``S``; it runs on any target. After each epoch the model is scored on the held-out rows
(accuracy for cross-entropy, RMSE for mse); the trained values go back into a copy of the
model file, in the file's own layout (:func:`~.frontends.layout.write_trained`).

>>> import numpy as np, lincompile as lc
>>> from lincompile.demo import digits_mlp
>>> from lincompile.datasets import load_digits
>>> trained, history = lc.train(digits_mlp(), load_digits(), optimizer=lc.Adam(0.01),
...                             epochs=2)
>>> history.metric_name, len(history.loss), history.metric[-1] > 0.8
('accuracy', 2, True)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from .arrays import empty_aligned
from .backends import compile
from .errors import LincompileError
from .files import refuse_inputs
from .ir import Graph
from .progress import Progress
from .train_data import load_data
from .training import SGD, Adam, AdamW, Optimizer, binary_output, training_graph
from .validate import PRECISION_TARGETS

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
#: ``step(x, y, lr, state) -> (loss, next state)``: one minibatch through the training step.
Step = Callable[[np.ndarray, np.ndarray, np.ndarray, dict], tuple[float, dict]]


@dataclass
class History:
    """Per epoch: the mean training loss and the held-out metric (``accuracy`` or ``rmse``;
    on the training rows when nothing is held out)."""

    metric_name: str
    loss: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    seconds: float = 0.0


class Scorer:
    """The model's metric on rows ``x, y``, with the parameters fed as inputs, so one build
    serves every epoch on every target."""

    def __init__(self, model: Graph, trained: list[str], target: str, loss: str,
                 threshold: float | None):
        g = model.clone()
        self.names = list(trained)  # frozen parameters stay constants of the scorer
        g.inputs += [g.params.pop(k).value for k in self.names]
        self.exe = compile(g.verify(), target)
        self.x, self.out = model.inputs[0].name, model.outputs[0].name
        self.loss, self.threshold = loss, threshold   # binary: class 1 above it

    def __call__(self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
        pred = self.exe.run({self.x: x, **{k: params[k] for k in self.names}})[self.out]
        if self.loss == "mse":
            return float(np.sqrt(np.mean((pred.astype(np.float64) - y) ** 2)))
        classes = (pred[:, 0] > self.threshold).astype(np.int64) if self.threshold is not None \
            else np.argmax(pred, axis=1)
        return float(np.mean(classes == y))


def metric_text(name: str, value: float, where: str) -> str:
    return f"{where} accuracy {value:6.1%}" if name == "accuracy" else f"{where} RMSE {value:.4g}"


def final_line(history: History, where: str, n: int, epochs: int) -> str:
    """``final val accuracy: 97.2% (349/359 rows) after 10 epochs in 1.2 s``."""
    m = history.metric[-1]
    what = (f"accuracy: {m:.1%} ({round(m * n)}/{n} rows)" if history.metric_name == "accuracy"
            else f"RMSE: {m:.4g} ({n} rows)")
    t = history.seconds
    took = f"{t:.1f} s" if t >= 0.1 else f"{t * 1000:.0f} ms"
    return f"final {where} {what} after {epochs} epochs in {took}"


def fused_step(train: Graph, target: str, options: dict | None = None) -> Step:
    """The training step as one graph: ``step(x, y, lr, state) -> (loss, next state)``;
    ``options`` go to ``lc.compile`` (e.g. ``precision``)."""
    exe, data = compile(train, target, **(options or {})), train.inputs[0].name

    def step(x, y, lr, state):
        out = exe.run({data: x, "target": y, "lr": lr, **state})
        return float(out["loss"]), {k: out[f"{k}.next"] for k in state}
    return step


def fit(train: Graph, scorer: Scorer, x: np.ndarray, y: np.ndarray, x_val: np.ndarray,
        y_val: np.ndarray, *, epochs: int, batch_size: int, seed: int, target: str,
        progress: Progress, where: str = "val", step: Step | None = None,
        options: dict | None = None) -> tuple[dict[str, np.ndarray], History]:
    """Train for ``epochs`` over shuffled minibatches (the last one partial); returns the
    final state (``P`` → value, optimizer state too) and the history. ``step``: how a
    minibatch is run (default :func:`fused_step`; data-parallel: :mod:`.distributed`)."""
    step = step or fused_step(train, target, options)
    state = {k: np.asarray(v) for k, v in train.initial_state.items()}
    lr = np.array(float(train.meta["lincompile.lr"]), np.float32)
    history = History("accuracy" if train.meta["lincompile.loss"] == "cross-entropy" else "rmse")
    rng = np.random.default_rng(seed)
    n_batches = -(-len(x) // batch_size)
    t0 = time.perf_counter()
    # each minibatch is gathered into the same two buffers, on 64-byte lines
    xb = empty_aligned((min(batch_size, len(x)), *x.shape[1:]), x.dtype)
    yb = empty_aligned((len(xb), *y.shape[1:]), y.dtype)
    for epoch in range(1, epochs + 1):
        order, total = rng.permutation(len(x)), 0.0
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xs, ys = (xb, yb) if len(idx) == len(xb) else (xb[:len(idx)], yb[:len(idx)])
            np.take(x, idx, axis=0, out=xs, mode="clip")   # in range: unbuffered
            np.take(y, idx, axis=0, out=ys, mode="clip")
            loss, state = step(xs, ys, lr, state)
            total += loss * len(idx)
            progress.batch(epoch, b + 1, n_batches)
        history.loss.append(total / len(x))
        history.metric.append(scorer(state, x_val, y_val))
        if not math.isfinite(history.loss[-1]):
            raise LincompileError(f"epoch {epoch}: the training loss is {history.loss[-1]}; "
                                  "lower the learning rate")
        progress.epoch(epoch, history.loss[-1],
                       metric_text(history.metric_name, history.metric[-1], where))
    history.seconds = time.perf_counter() - t0
    return state, history


def split(x: np.ndarray, y: np.ndarray, val_split: float, seed: int):
    """A seeded shuffle into ``(x_train, y_train, x_val, y_val)``; no held-out rows: the
    training rows score themselves."""
    if not 0 <= val_split < 1:
        raise LincompileError(f"val_split {val_split} must lie in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * val_split)
    if len(x) - n_val < 1:
        raise LincompileError(f"data: {len(x)} rows leave none to train on with val_split "
                              f"{val_split}")
    val, tr = (order[:n_val], order[n_val:]) if n_val else (order, order)
    return x[tr], y[tr], x[val], y[val]


def _header(progress: Progress, model, data, x, sizes, graph: Graph, step: Graph,
            head: dict) -> None:
    """What is trained on what: the data, the split, the model and its logits."""
    name = Path(data).name if isinstance(data, (str, os.PathLike)) else "arrays"
    progress.say(f"lincompile train: {Path(model).name} on {name} ({len(x):,} rows, "
                 f"{' x '.join(map(str, x.shape[1:]))} features)")
    progress.say(f"  data      {sizes[0]:,} training / {sizes[1]:,} held-out rows")
    n_linear = sum(n.op == "linear" for n in graph.nodes)
    values = sum(int(np.prod(v.shape)) for k, v in step.initial_state.items()
                 if k in graph.params)
    logits = step.meta.get("lincompile.logits")
    progress.say(f"  model     {graph.name}: {n_linear} Linear layers, {values:,} trainable "
                 "values" + (f"; logits '{logits}'" if logits else "")
                 + (_head_text(head) if head else ""))


def _head_text(head: dict) -> str:
    n = len(head["nodes"])
    nodes = f"{n} node{'s' if n != 1 else ''}, kept as is"
    if head["kind"] == "none":
        return f" (chosen by name; {nodes} after it)"
    return f" before a {head['kind']} head ({nodes})"


def _optimizer(optimizer: Optimizer | str) -> Optimizer:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise LincompileError(f"unknown optimizer '{optimizer}'; choose one of "
                                  f"{', '.join(OPTIMIZERS)} (or pass lc.SGD(...), ...)")
        return OPTIMIZERS[optimizer]()
    return optimizer


def train(model: str | os.PathLike | Graph, data, *, loss: str = "cross-entropy",
          optimizer: Optimizer | str = "adam", epochs: int = 10, batch_size: int = 32,
          val_split: float = 0.2, seed: int = 0, target: str = "onnx",
          logits: str | None = None, freeze=(), x_key: str = "x", y_key: str = "y",
          workers: int | None = None, out: str | os.PathLike | None = None,
          stream: TextIO | None = None, precision: str = "fp32") -> tuple[Graph, History]:
    """Train ``model`` (an ONNX path, or a Graph) on ``data`` (a ``.npz``/``.csv`` path or
    ``(x, y)`` arrays); returns the trained model graph and the :class:`History`.

    A path is imported with a symbolic batch (``load_onnx(path, batch="N", logits=logits)``)
    and, with ``out``, the trained values are written into a copy of it at ``out``
    (``write_trained``); a Graph is written with ``save_onnx``. ``optimizer``: ``"sgd"``,
    ``"adam"``, ``"adamw"`` with torch's defaults, or ``lc.SGD(...)`` etc. ``stream``: where
    progress goes (None: nowhere). ``workers``: data-parallel processes on torch.distributed
    (needs torch; default one, or under torchrun as many as it started; docs/data-parallel.md).
    """
    args = dict(locals())   # the call, for the other processes of a data-parallel run
    from . import distributed
    from .frontends.layout import write_trained
    from .frontends.onnx_import import load_onnx

    if epochs < 1 or batch_size < 1:
        raise LincompileError("epochs and batch_size must be ≥ 1")
    path = None if isinstance(model, Graph) else Path(model)
    if path is not None and out is not None:   # before training, not after
        refuse_inputs([out], [path])
    if path is None and logits is not None:
        raise LincompileError("logits= chooses a tensor of a model file; pass the path")
    if precision != "fp32" and target not in PRECISION_TARGETS:
        raise LincompileError(f"precision '{precision}' needs target c, cuda or cuda-cpu, "
                              f"not '{target}'")
    options = {"precision": precision} if precision != "fp32" else {}
    worker = workers if isinstance(workers, distributed.Worker) else None
    if worker is None and distributed.world_size(workers) > 1:
        return distributed.data_parallel(train, args)   # runs this function in each process
    graph = load_onnx(path, batch="N", logits=logits) if path is not None else model
    opt = _optimizer(optimizer)
    step = training_graph(graph, loss=loss, optimizer=opt, frozen=freeze)
    head = json.loads(graph.meta.get("lincompile.head", "{}"))
    x, y = load_data(data, graph, loss, head, x_key, y_key)
    x_tr, y_tr, x_val, y_val = split(x, y, val_split, seed)
    threshold = {"logit": 0.0, "probability": 0.5}.get(binary_output(graph))   # z or σ(z)
    scorer = Scorer(graph, [k for k in step.initial_state if k in graph.params], target, loss,
                    threshold)
    progress = Progress(stream, epochs)
    where = "val" if val_split else "train"
    _header(progress, path or graph.name, data, x, (len(x_tr), len(x_val) if val_split else 0),
            graph, step, head)
    progress.say(f"  training  {loss} + {opt.op} (lr {opt.lr:g}), batch {batch_size}, "
                 f"{epochs} epochs, on {target}" + (f" ({precision})" if options else "")
                 + (f", {worker}" if worker else ""))
    run = worker.step(training_graph(graph, loss=loss, optimizer=opt, frozen=freeze,
                                     split=True), target, options) if worker else None
    state, history = fit(step, scorer, x_tr, y_tr, x_val, y_val, epochs=epochs,
                         batch_size=batch_size, seed=seed, target=target, progress=progress,
                         where=where, step=run, options=options)
    trained = graph.clone()
    params = {k: state[k] for k in step.initial_state if k in trained.params}
    for k, v in params.items():
        trained.params[k].data = v
    progress.say(final_line(history, where, len(y_val), epochs))
    if out is not None:
        if path is not None:
            written = write_trained(path, params, out, params=step)
        else:
            from .backends.onnx import save_onnx

            written = save_onnx(trained, out)
        progress.say(f"wrote {written}  (" + (f"{path.name} with its {len(params)} trained "
                     "tensors replaced, in the file's layout" if path else
                     f"{len(params)} trained parameters") + ")")
    return trained, history
