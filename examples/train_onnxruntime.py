"""Train in plain onnxruntime: a Python loop that feeds every ``.next`` output back in.

    python examples/train_onnxruntime.py [OUT_DIR]

lincompile writes two files (the model and its training step); from then on only numpy,
onnx and onnxruntime are used, as in any program that ships the training graph.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import lincompile as lc
from lincompile.datasets import load_digits, split


def export(out: Path) -> tuple[Path, Path]:
    """A 64-32-10 MLP and its training step (SGD with momentum)."""
    m = lc.Graph("digits", seed=0)
    x = m.input("x", ["N", 64])
    m.output(m.linear(m.relu(m.linear(x, 32, name="fc1")), 10, name="fc2"), name="logits")
    train = lc.training_graph(m, loss="cross-entropy", optimizer=lc.SGD(0.1, momentum=0.9))
    return lc.save_onnx(m, out / "digits.onnx"), lc.save_onnx(train, out / "digits_train.onnx")


def main(out: Path) -> int:
    model_path, train_path = export(out)
    model = onnx.load(model_path)
    step = ort.InferenceSession(train_path, providers=["CPUExecutionProvider"])

    # The starting state: parameters from the model's initializers (same names), every
    # optimizer state input (P.velocity) at zero. The learning rate is in the metadata.
    params = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state_names = [i.name for i in step.get_inputs() if i.name not in ("x", "target", "lr")]
    state = {k: params[k] if k in params else np.zeros_like(params[k.rsplit(".", 1)[0]])
             for k in state_names}
    meta = {p.key: p.value for p in onnx.load(train_path).metadata_props}
    lr = np.array(float(meta["lincompile.lr"]), np.float32)
    outputs = [o.name for o in step.get_outputs()]

    x, y = load_digits()
    x_train, y_train, x_test, y_test = split(x, y, test_fraction=0.2, seed=0)
    rng = np.random.default_rng(0)
    for epoch in range(5):
        losses = []
        for idx in np.array_split(rng.permutation(len(x_train)), len(x_train) // 32):
            res = dict(zip(outputs, step.run(None, {"x": x_train[idx], "target": y_train[idx],
                                                    "lr": lr, **state})))
            state = {k: res[f"{k}.next"] for k in state_names}  # the whole trick
            losses.append(float(res["loss"]))
        print(f"epoch {epoch + 1}: mean loss {np.mean(losses):.4f}")

    # The trained model: the same file with its initializers replaced.
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(state[t.name], t.name))
    trained = out / "digits_trained.onnx"
    onnx.save(model, trained)
    infer = ort.InferenceSession(trained, providers=["CPUExecutionProvider"])
    acc = np.mean(np.argmax(infer.run(None, {"x": x_test})[0], axis=1) == y_test)
    print(f"test accuracy {acc:.1%}; wrote {trained}")
    return 0


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lincompile-"))
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(main(out))
