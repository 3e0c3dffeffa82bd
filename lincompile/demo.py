"""``lincompile demo``: train a 64-32-10 MLP on the bundled digits, in onnxruntime, through
the training graph lincompile exports.

The loop is what any user of a training graph writes (docs/training-graphs.md): feed a
minibatch, the learning rate and the current state; feed every ``S.next`` back as ``S``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from . import datasets
from .backends import compile
from .backends.onnx import save_onnx
from .errors import LincompileError
from .files import refuse_foreign
from .ir import Graph
from .training import SGD, Adam, AdamW, training_graph

#: Per-optimizer settings that train this model well in a few epochs.
OPTIMIZERS = {
    "sgd": lambda lr: SGD(lr or 0.1, momentum=0.9),
    "adam": lambda lr: Adam(lr or 0.01),
    "adamw": lambda lr: AdamW(lr or 0.01),
}
BAR = 30
TRAIN_FILE, MODEL_FILE = "digits_mlp_train.onnx", "digits_mlp.onnx"


def digits_mlp(seed: int = 0) -> Graph:
    """The demo's model: 64 → Linear → ReLU → Linear → 10 logits."""
    g = Graph("digits_mlp", seed=seed)
    x = g.input("x", ["N", 64])
    g.output(g.linear(g.relu(g.linear(x, 32, name="fc1")), 10, name="fc2"), name="logits")
    return g


def accuracy(model: Graph, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
             ) -> float:
    """Accuracy of ``model`` with ``params`` in onnxruntime."""
    for k, v in params.items():
        model.params[k].data = v
    logits = compile(model, "onnx").run({"x": x})["logits"]
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _bar(done: int, total: int) -> str:
    k = BAR * done // total
    return "[" + "#" * k + "." * (BAR - k) + "]"


def run(epochs: int = 10, optimizer: str = "adam", out: str | Path = "lincompile-demo",
        lr: float | None = None, batch_size: int = 32, seed: int = 0,
        stream: TextIO | None = None, force: bool = False) -> dict:
    """Train, print progress to ``stream``, write both models to ``out``; returns a summary
    (``test_accuracy``, ``losses``, ``paths``). Files of the same names already in ``out``
    are replaced only if lincompile wrote them (or with ``force``)."""
    import onnxruntime as ort

    stream = stream or sys.stdout
    say = lambda *a, **k: print(*a, **k, file=stream, flush=True)
    live = stream.isatty()
    out = Path(out)
    refuse_foreign([out / TRAIN_FILE, out / MODEL_FILE], force)   # before, not after, training
    x, y = datasets.load_digits()
    x_train, y_train, x_test, y_test = datasets.split(x, y, 0.2, seed)
    model = digits_mlp(seed)
    opt = OPTIMIZERS[optimizer](lr)
    train = training_graph(model, loss="cross-entropy", optimizer=opt)
    train_path = save_onnx(train, out / TRAIN_FILE)
    session = ort.InferenceSession(str(train_path), providers=["CPUExecutionProvider"])
    state_names = list(train.initial_state)
    out_names = [o.name for o in session.get_outputs()]
    state = dict(train.initial_state)
    lr_feed = np.array(float(train.meta["lincompile.lr"]), np.float32)

    say(f"lincompile demo: a 64-32-10 MLP on {len(x):,} handwritten digits (8x8, UCI via "
        "scikit-learn), trained in onnxruntime")
    say(f"  data      {len(x_train):,} training / {len(x_test):,} held-out test images, "
        "pixels scaled to [0, 1]")
    say(f"  training  {train_path.name}: cross-entropy + {optimizer} (lr {float(lr_feed):g}), "
        f"batch {batch_size}, {epochs} epochs")
    rng = np.random.default_rng(seed)
    n_batches = -(-len(x_train) // batch_size)
    losses, t0 = [], time.perf_counter()
    acc = 0.0
    for epoch in range(1, epochs + 1):
        order, total = rng.permutation(len(x_train)), 0.0
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            feeds = {"x": x_train[idx], "target": y_train[idx], "lr": lr_feed, **state}
            outs = dict(zip(out_names, session.run(out_names, feeds)))
            state = {k: outs[f"{k}.next"] for k in state_names}
            total += float(outs["loss"]) * len(idx)
            if live:
                say(f"\repoch {epoch:>2}/{epochs} {_bar(b + 1, n_batches)}", end="")
        losses.append(total / len(x_train))
        if not np.isfinite(losses[-1]):   # never write a NaN model and call it trained
            raise LincompileError(f"training diverged: the loss is {losses[-1]} after epoch "
                                  f"{epoch} (lr {float(lr_feed):g}); try a smaller --lr")
        acc = accuracy(model, {k: state[k] for k in model.params}, x_test, y_test)
        say(("\r" if live else "") + f"epoch {epoch:>2}/{epochs} {_bar(1, 1)} "
            f"loss {losses[-1]:.4f}  test accuracy {acc:6.1%}")
    seconds = time.perf_counter() - t0
    model_path = save_onnx(model, out / MODEL_FILE)
    say(f"final test accuracy: {acc:.1%} ({round(acc * len(y_test))}/{len(y_test)} held-out "
        f"images) after {epochs} epochs in {seconds:.1f} s")
    say(f"wrote {train_path}  (training step: x, target, lr, parameters and state in; "
        "loss and every .next out)")
    say(f"wrote {model_path}  (trained model: x [N, 64] -> logits [N, 10])")
    return {"test_accuracy": acc, "losses": losses, "seconds": seconds,
            "paths": {"training": train_path, "model": model_path}}
