"""``lincompile demo``: train a 64-32-10 MLP on the bundled digits, in onnxruntime, through
the training graph lincompile exports.

The loop (shared with ``lincompile train``, :func:`lincompile.training_loop.fit`) is what any
user of a training graph writes (docs/training-graphs.md): feed a minibatch, the learning rate
and the current state; feed every ``S.next`` back as ``S``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from . import datasets
from .backends.onnx import save_onnx
from .files import refuse_foreign
from .ir import Graph
from .progress import Progress
from .training import SGD, Adam, AdamW, training_graph
from .training_loop import Scorer, fit

#: Per-optimizer settings that train this model well in a few epochs.
OPTIMIZERS = {
    "sgd": lambda lr: SGD(lr or 0.1, momentum=0.9),
    "adam": lambda lr: Adam(lr or 0.01),
    "adamw": lambda lr: AdamW(lr or 0.01),
}
TRAIN_FILE, MODEL_FILE = "digits_mlp_train.onnx", "digits_mlp.onnx"


def digits_mlp(seed: int = 0) -> Graph:
    """The demo's model: 64 → Linear → ReLU → Linear → 10 logits."""
    g = Graph("digits_mlp", seed=seed)
    x = g.input("x", ["N", 64])
    g.output(g.linear(g.relu(g.linear(x, 32, name="fc1")), 10, name="fc2"), name="logits")
    return g


def run(epochs: int = 10, optimizer: str = "adam", out: str | Path = "lincompile-demo",
        lr: float | None = None, batch_size: int = 32, seed: int = 0,
        stream: TextIO | None = None, force: bool = False) -> dict:
    """Train, print progress to ``stream``, write both models to ``out``; returns a summary
    (``test_accuracy``, ``losses``, ``paths``). Files of the same names already in ``out``
    are replaced only if lincompile wrote them (or with ``force``)."""
    progress = Progress(stream or sys.stdout, epochs)
    out = Path(out)
    refuse_foreign([out / TRAIN_FILE, out / MODEL_FILE], force)   # before, not after, training
    x, y = datasets.load_digits()
    x_train, y_train, x_test, y_test = datasets.split(x, y, 0.2, seed)
    model = digits_mlp(seed)
    opt = OPTIMIZERS[optimizer](lr)
    train = training_graph(model, loss="cross-entropy", optimizer=opt)
    train_path = save_onnx(train, out / TRAIN_FILE)

    progress.say(f"lincompile demo: a 64-32-10 MLP on {len(x):,} handwritten digits (8x8, UCI "
                 "via scikit-learn), trained in onnxruntime")
    progress.say(f"  data      {len(x_train):,} training / {len(x_test):,} held-out test "
                 "images, pixels scaled to [0, 1]")
    progress.say(f"  training  {train_path.name}: cross-entropy + {optimizer} (lr {opt.lr:g}), "
                 f"batch {batch_size}, {epochs} epochs")
    trained = [k for k in train.initial_state if k in model.params]
    scorer = Scorer(model, trained, "onnx", "cross-entropy", threshold=None)
    state, history = fit(train, scorer, x_train, y_train, x_test, y_test, epochs=epochs,
                         batch_size=batch_size, seed=seed, target="onnx", progress=progress,
                         where="test")
    for k in model.trainable():
        model.params[k.name].data = state[k.name]
    acc = history.metric[-1]
    model_path = save_onnx(model, out / MODEL_FILE)
    progress.say(f"final test accuracy: {acc:.1%} ({round(acc * len(y_test))}/{len(y_test)} "
                 f"held-out images) after {epochs} epochs in {history.seconds:.1f} s")
    progress.say(f"wrote {train_path}  (training step: x, target, lr, parameters and state in; "
                 "loss and every .next out)")
    progress.say(f"wrote {model_path}  (trained model: x [N, 64] -> logits [N, 10])")
    return {"test_accuracy": acc, "losses": history.loss, "seconds": history.seconds,
            "paths": {"training": train_path, "model": model_path}}
