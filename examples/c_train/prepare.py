"""Generate the C training code and the data file that ``train.c`` uses.

    python prepare.py build     # writes build/model.c, build/model.h, build/digits.bin

The model is the digits MLP 64-32-10 (ReLU); the training step is cross-entropy with SGD
(momentum 0.9). ``model_forward`` reads the weights as inputs, so the C program evaluates
the weights it trains; ``model_train_step_init`` gives the initial weights.

digits.bin (little-endian): the 8 bytes ``LCDIGIT1``, four uint32 (n_train, n_test,
features, classes), then x_train float32[n_train, features], y_train int64[n_train],
x_test float32[n_test, features], y_test int64[n_test].
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

import lincompile as lc
from lincompile.backends.c import write_c_sources
from lincompile.datasets import load_digits, split


def model() -> lc.Graph:
    g = lc.Graph("digits_mlp", seed=0)
    x = g.input("x", ["N", 64])
    g.output(g.linear(g.relu(g.linear(x, 32, name="fc1")), 10, name="fc2"), name="logits")
    return g


def main(out: Path) -> None:
    m = model()
    train = lc.training_graph(m, loss="cross-entropy", optimizer=lc.SGD(0.05, momentum=0.9))
    write_c_sources({"forward": m, "train_step": train}, out)
    x_train, y_train, x_test, y_test = split(*load_digits(), test_fraction=0.2, seed=0)
    with open(out / "digits.bin", "wb") as f:
        f.write(b"LCDIGIT1" + struct.pack("<4I", len(x_train), len(x_test), 64, 10))
        for a, dt in ((x_train, "<f4"), (y_train, "<i8"), (x_test, "<f4"), (y_test, "<i8")):
            f.write(np.ascontiguousarray(a, dt).tobytes())
    print(f"wrote {out}/model.c, model.h and digits.bin ({len(x_train)} train, "
          f"{len(x_test)} test images)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build"))
