"""Freeze the first layer and fine-tune the last one.

    python examples/finetune_last_layer.py [OUT_DIR]

Pretrain a 64-32-10 MLP on the digits 0-4, then freeze ``fc1`` (it stays an initializer of
the training graph, with no ``.grad``/``.next``) and fine-tune ``fc2`` on the digits 5-9.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import lincompile as lc
from lincompile.datasets import load_digits, split


def fit(train: lc.Graph, x, y, epochs: int) -> dict:
    """Minibatch training in onnxruntime; returns the final state."""
    step, state = lc.compile(train, target="onnx"), dict(train.initial_state)
    lr = np.float32(float(train.meta["lincompile.lr"]))
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 32):
            out = step.run({"x": x[idx], "target": y[idx], "lr": lr, **state})
            state = {k: out[f"{k}.next"] for k in state}
    print(f"  {train.name}: last minibatch loss {float(out['loss']):.4f}")
    return state


def accuracy(model: lc.Graph, x, y) -> float:
    return float(np.mean(np.argmax(lc.compile(model, "onnx").run({"x": x})["logits"], 1) == y))


def main(out: Path) -> int:
    m = lc.Graph("digits", seed=0)
    x_in = m.input("x", ["N", 64])
    m.output(m.linear(m.relu(m.linear(x_in, 32, name="fc1")), 10, name="fc2"), name="logits")
    x, y = load_digits()
    x_train, y_train, x_test, y_test = split(x, y, test_fraction=0.2, seed=0)
    old, new = y_train < 5, y_test >= 5

    print("pretraining every parameter on digits 0-4")
    state = fit(lc.training_graph(m, "cross-entropy", lc.Adam(0.01), name="pretrain"),
                x_train[old], y_train[old], epochs=5)
    for k, v in state.items():
        if k in m.params:
            m.params[k].data = v
    fc1 = m.params["fc1.weight"].data.copy()
    before = accuracy(m, x_test[new], y_test[new])
    print(f"  accuracy on held-out 5-9 before fine-tuning: {before:.1%} (never seen)")

    print("fine-tuning fc2 on digits 5-9, fc1 frozen")
    tune = lc.training_graph(m, "cross-entropy", lc.Adam(0.03), frozen=["fc1.weight", "fc1.bias"],
                             name="finetune")
    print("  trainable inputs:", ", ".join(v.name for v in tune.inputs if v.name in m.params))
    lc.save_onnx(tune, out / "finetune_train.onnx")
    state = fit(tune, x_train[y_train >= 5], y_train[y_train >= 5], epochs=20)
    for k in ("fc2.weight", "fc2.bias"):
        m.params[k].data = state[k]
    acc = accuracy(m, x_test[new], y_test[new])
    assert np.array_equal(m.params["fc1.weight"].data, fc1)  # frozen: untouched
    path = lc.save_onnx(m, out / "finetuned.onnx")
    print(f"  accuracy on held-out 5-9 after fine-tuning: {acc:.1%}; wrote {path}")
    return 0


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lincompile-"))
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(main(out))
